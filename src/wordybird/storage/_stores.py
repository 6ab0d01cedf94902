"""The store that reaches a :class:`Location`, and what every caller does with any store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from zarr.abc.store import Store

from wordybird.storage._local import LocalStore
from wordybird.storage._location import Location
from wordybird.storage._s3 import S3Store

#: The stores a recording is written through (both have ``put`` and ``take_folders``).
RecordingDisk = LocalStore | S3Store


def open_store(location: Location, *, read_only: bool, durable: bool = False) -> RecordingDisk:
    """The zarr store of the recording at ``location``, with fault points on every write."""
    if location.local is not None:
        return LocalStore(location.local, read_only=read_only, durable=durable)
    return S3Store.at(location.text, location.options, read_only=read_only)


async def gather_all(*steps: Awaitable[Any]) -> None:
    """Await every one of ``steps``, then raise the first failure.

    ``asyncio.gather`` raises at the first failure and leaves the others running: a chunk
    write could land after the error was reported, or after a resume had cut the arrays
    back. Waiting for all of them leaves the store still once a call returns or raises.
    """
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


async def any_key(disk: Store, prefix: str) -> bool:
    """Whether any key starts with ``prefix`` (a folder, or an S3 prefix, that is not
    empty: S3 has no folders of its own)."""
    async for _ in disk.list_prefix(prefix):
        return True
    return False
