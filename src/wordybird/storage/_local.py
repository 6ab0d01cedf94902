"""A recording in a local folder: zarr's LocalStore, every file written atomically by us.

Each object is written to a ``*.partial`` temporary beside its name and renamed into place,
so every file is the old or the new one, never torn (zarr's own LocalStore wrote in place
in zarr 3.1.0, the lowest the base install allows); in durable mode the temporary is
flushed to the disk before the rename, and the folders that got new names are collected,
to be flushed before anything (the header) depends on them. A killed writer's temporaries
are removed by the next resume.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path

import zarr.storage
from zarr.core.buffer import Buffer

from wordybird.storage._faults import fault_point
from wordybird.storage._misses import NotesMisses

#: The suffix of a file being written; a resume removes what a killed writer left.
PARTIAL_SUFFIX = ".partial"
#: Permissions of a written file (before the umask): it is data.
FILE_MODE = 0o644


def put_file(path: Path, parts: list[memoryview], *, durable: bool) -> None:
    """``parts``, one after the other, as the whole content of ``path``: written to a
    ``*.partial`` temporary beside it (flushed to the disk first when ``durable``) and
    renamed into place. Parts are written with one ``writev``: no copy joins them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # named as zarr's own LocalStore names its temporaries in zarr 3.1.6
    temporary = path.with_suffix(f".{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        _write_all(fd, parts)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(temporary, path)


def _write_all(fd: int, parts: list[memoryview]) -> None:
    views = [view for view in parts if view.nbytes]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if written:
            views[0] = views[0][written:]


class LocalStore(NotesMisses, zarr.storage.LocalStore):
    """zarr's LocalStore with what the commit protocol needs: a fault point before every
    write, atomic writes (see the module), fsync in durable mode, and :meth:`put`, the
    writer's own synchronous write of an encoded chunk."""

    def __init__(self, root: Path | str, *, read_only: bool = False, durable: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.durable = durable
        self._folders: set[Path] = set()
        self._lock = threading.Lock()  # put() runs in the writer's codec threads too

    async def set(self, key: str, value: Buffer) -> None:
        await asyncio.to_thread(self.put, key, [memoryview(value.as_buffer_like())])

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not await self.exists(key):  # one writer per recording: no race to lose
            await self.set(key, value)

    def put(self, key: str, parts: list[memoryview]) -> None:
        """Write the object ``key`` whole (see the module); blocks until it is in place."""
        if self.read_only:
            raise ValueError(f"{self.root} is opened read-only; cannot write {key}")
        fault_point(f"write:{key}")
        put_file(self.root / key, parts, durable=self.durable)
        if self.durable:
            with self._lock:
                self._folders.update(self.root / folder for folder in Path(key).parents)

    def take_folders(self) -> set[Path]:
        """The folders that got new file names since the last call (durable mode)."""
        with self._lock:
            folders, self._folders = self._folders, set()
        return folders
