"""The store's access to the disk: zarr's LocalStore with durable writes, and the fault points.

Every write of a recording goes through :class:`LocalStore`, which adds what the commit
protocol needs (fsync before rename in durable mode; the folders to flush before a commit)
and calls :func:`fault_point` before each write, where tests make the process die or the
disk fill up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import zarr.storage
from zarr.core.buffer import Buffer
from zarr.storage._local import _atomic_write  # its *.partial naming: resume removes them


def fault_point(point: str) -> None:
    """Mark a point of the commit protocol where a process can die or a write can fail.

    A no-op. The fault-injection tests (tests/test_recorder_faults.py) replace it to kill
    the process there (``os._exit``) or to raise (a full disk), so that every window of the
    protocol is tested on purpose rather than by a lucky ``kill -9``. The points:
    ``create_array`` (before each of the first step's arrays), ``resize`` and ``resized``
    (around growing the arrays), ``write:KEY`` (before every file the store writes: chunks,
    array metadata, the header), ``commit`` and ``committed`` (around the header write that
    commits a step), ``truncate`` (after truncation's header write, before chunks are
    deleted), ``remove_orphan`` and ``shrink`` (before each array removed or shrunk by a
    resume or a truncation).
    """


class LocalStore(zarr.storage.LocalStore):
    """zarr's LocalStore plus what the commit protocol needs from it: a fault point before
    every write and, when ``durable``, writes that reach the disk (LocalStore never fsyncs).

    A durable write flushes its temporary file before renaming it into place, so after a
    power loss the file is the old or the new one, never a renamed but empty one; the
    folders that hold the new names are collected for :meth:`take_folders`, to be flushed
    before anything (the header) depends on them.
    """

    def __init__(self, root: Path | str, *, read_only: bool = False, durable: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.durable = durable
        self._folders: set[Path] = set()

    async def set(self, key: str, value: Buffer) -> None:
        fault_point(f"write:{key}")
        if not self.durable:
            await super().set(key, value)
            return
        self._check_writable()
        await asyncio.to_thread(_put_durable, self.root / key, value)
        self._folders.update(self.root / folder for folder in Path(key).parents)

    def take_folders(self) -> set[Path]:
        """The folders that got new file names since the last call."""
        folders, self._folders = self._folders, set()
        return folders


def _put_durable(path: Path, value: Buffer) -> None:
    """zarr's atomic write (its ``*.partial`` temporary, renamed) with the data fsynced
    before the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_write(path, "wb") as file:
        file.write(value.as_buffer_like())
        file.flush()
        os.fsync(file.fileno())


async def gather_all(*steps: Awaitable[Any]) -> None:
    """Await every one of ``steps``, then raise the first failure.

    ``asyncio.gather`` raises at the first failure and leaves the others running: a chunk
    write could land after the error was reported, or after a resume had cut the arrays
    back. Waiting for all of them leaves the store still once a call returns or raises.
    """
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result
