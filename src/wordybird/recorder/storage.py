"""Where a recording lives, and the store that reaches it: a local folder or S3.

A recording is a Zarr v3 group in a zarr store: :class:`LocalStore` for a folder (zarr's,
plus fsync before rename in durable mode and the folders to flush before a commit) or
:class:`S3Store` for an ``s3://bucket/prefix`` URL (zarr's ``ObjectStore`` over obstore).
Both call :func:`fault_point` before each write, where tests make the process die or the
disk fill up. Everything above this module reaches the recording through the zarr store
API only (get, set, exists, list_dir, delete_dir, getsize_prefix), so that the commit
protocol is the same code on a disk and in a bucket.

obstore was chosen over s3fs (zarr's ``FsspecStore``) by measurement against a local S3
server: writing a notebook-sized step 115 vs 161 ms, reading it 39 vs 114 ms
(benchmarks/bench_s3.py). Chunks are at most a few MB, below obstore's 5 MiB multipart
threshold, so every object is one atomic PUT.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr.storage
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync

from wordybird.errors import WordybirdError
from wordybird.extras import needing_extras

if TYPE_CHECKING:
    from wordybird.location import Location

#: obstore's client options (its ClientConfig); every other storage option is S3 config.
_CLIENT_OPTIONS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)
#: Where the AWS tools read a custom endpoint (a local or S3-compatible server) from.
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


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


#: While a read runs under :func:`missing_keys`: the keys it asked for that do not exist.
_missing: ContextVar[set[str] | None] = ContextVar("wordybird_missing_keys", default=None)


@contextmanager
def missing_keys() -> Iterator[set[str]]:
    """Collect the keys that reads in this block found missing.

    zarr reads a missing chunk as its fill value, silently; in a recording every chunk of
    a committed step exists, so a missing one is damage. Noting the misses as the reads
    happen costs no request of its own (an ``exists`` per chunk would double a read's
    requests on S3). The context reaches zarr's event-loop tasks: ``sync`` submits the
    read with a copy of the caller's context, and tasks inherit it.
    """
    found: set[str] = set()
    token = _missing.set(found)
    try:
        yield found
    finally:
        _missing.reset(token)


class _NotesMisses:
    """Mixed into the stores: report each missing key to :func:`missing_keys`."""

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await super().get(key, prototype, byte_range)  # type: ignore[misc]
        if value is None:
            found = _missing.get()
            if found is not None:
                found.add(key)
        return value


class LocalStore(_NotesMisses, zarr.storage.LocalStore):
    """zarr's LocalStore plus what the commit protocol needs from it: a fault point before
    every write, every file written atomically (to a ``*.partial`` temporary beside it, then
    renamed: zarr's own LocalStore wrote in place before zarr 3.1.3), and, when ``durable``,
    writes that reach the disk (LocalStore never fsyncs).

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
        await asyncio.to_thread(self.put, key, value.as_buffer_like())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):  # one writer: no race to lose
            await self.set(key, value)

    def put(self, key: str, data: memoryview | bytes) -> None:
        """Write the object ``key`` whole, atomically (and durably, in durable mode)."""
        if self.read_only:
            raise ValueError(f"{self.root} was opened read-only; cannot write {key}")
        fault_point(f"write:{key}")
        path = self.root / key
        put_file(path, data, durable=self.durable)
        if self.durable:
            self._folders.update(self.root / folder for folder in Path(key).parents)

    def take_folders(self) -> set[Path]:
        """The folders that got new file names since the last call."""
        folders, self._folders = self._folders, set()
        return folders


class S3Store(_NotesMisses, zarr.storage.ObjectStore):
    """zarr's ObjectStore on an S3 bucket, with a fault point before every write.

    An acknowledged PUT is durable and atomic on S3: there is nothing to fsync, and no
    temporary names (hence no rename) are used.
    """

    @classmethod
    def at(cls, url: str, options: Mapping[str, str], *, read_only: bool) -> S3Store:
        """The store for ``s3://bucket/prefix``: credentials, region and endpoint from the
        usual AWS environment variables, overridden by ``options`` (obstore's S3 config
        keys such as ``endpoint``, ``region``, ``access_key_id``, or client options such
        as ``allow_http``). A custom endpoint (a local or S3-compatible server) gets
        path-style requests, and plain HTTP when its URL says ``http://``."""
        with needing_extras(f"{url}: an s3:// recording"):
            from obstore.store import S3Store as ObstoreS3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        config = {k: v for k, v in options.items() if k not in _CLIENT_OPTIONS}
        client = {k: v for k, v in options.items() if k in _CLIENT_OPTIONS}
        endpoint = config.get("endpoint") or next(
            (os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)), None
        )
        if endpoint:
            config = {"endpoint": endpoint, "virtual_hosted_style_request": "false", **config}
            if endpoint.startswith("http://"):
                client = {"allow_http": "true", **client}
        try:
            inner = ObstoreS3(bucket, prefix=prefix or None, config=config, client_options=client)
        except Exception as exc:  # obstore's builder errors: a bad option or value
            raise WordybirdError(f"cannot reach {url}: {exc}") from exc
        return cls(inner, read_only=read_only)

    async def set(self, key: str, value: Buffer) -> None:
        fault_point(f"write:{key}")
        await super().set(key, value)

    def take_folders(self) -> set[Path]:
        """No folders to flush on S3 (see :meth:`LocalStore.take_folders`)."""
        return set()


#: The suffix of a file being written; a resume removes what a killed writer left.
PARTIAL_SUFFIX = ".partial"


def put_file(path: Path, data: memoryview | bytes, *, durable: bool) -> None:
    """``data`` as the whole content of ``path``: written to a ``*.partial`` temporary
    beside it (flushed to the disk first when ``durable``) and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # named as zarr's LocalStore names its temporaries (3.1.3 and later)
    temporary = path.with_suffix(f".{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temporary, path)


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


# -- single objects beside a recording (a run's run.json, token masks, summary) ----------------


def _object(location: Location, *, read_only: bool) -> tuple[S3Store, str]:
    """The bucket's store and the object's key, for an ``s3://bucket/key`` location."""
    if location.local is not None:
        raise ValueError(f"{location} is not in object storage")
    bucket, _, key = location.text.removeprefix("s3://").partition("/")
    return S3Store.at(f"s3://{bucket}", location.options, read_only=read_only), key


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """obstore's errors (no server, no credentials, no such bucket) as one line."""
    try:
        yield
    except WordybirdError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        raise WordybirdError(f"{what}: {text.splitlines()[0] if text else repr(exc)}") from exc


def get_object(location: Location) -> bytes | None:
    """The object at an ``s3://`` location, None if there is none."""
    store, key = _object(location, read_only=True)
    with _s3_errors(f"cannot read {location}"):
        found = sync(store.get(key, default_buffer_prototype()))
    return None if found is None else found.to_bytes()


def object_exists(location: Location) -> bool:
    """Whether an object is at an ``s3://`` location."""
    store, key = _object(location, read_only=True)
    with _s3_errors(f"cannot reach {location}"):
        return sync(store.exists(key))


def put_object(location: Location, data: bytes) -> None:
    """Write one object (one PUT: replaced whole or not at all)."""
    store, key = _object(location, read_only=False)
    with _s3_errors(f"cannot write {location}"):
        sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def delete_object(location: Location) -> None:
    """Remove the object at an ``s3://`` location, if there is one."""
    store, key = _object(location, read_only=False)
    with _s3_errors(f"cannot delete {location}"):
        sync(store.delete(key))


def holds_keys(location: Location) -> bool:
    """Whether any object lies below an ``s3://`` prefix (a recording, say)."""
    store, key = _object(location, read_only=True)
    with _s3_errors(f"cannot reach {location}"):
        return sync(any_key(store, f"{key}/" if key else ""))


def delete_prefix(location: Location) -> None:
    """Remove every object below an ``s3://`` prefix (a recording being replaced)."""
    store = location.store(read_only=False)
    with _s3_errors(f"cannot delete {location}"):
        sync(store.delete_dir(""))
