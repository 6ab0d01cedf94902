"""Writing a recording: creating it, appending and committing steps, truncating, resuming.

This is the commit protocol of FORMAT.md ("Commit protocol"). A step's chunks are all
written (and, durable, flushed) before the header that commits it is rewritten; the header
is the only truth, so a process killed at any moment leaves a store whose first
``committed`` positions are exact, and :meth:`WritableStore.discard_uncommitted` removes
whatever lies past them. Reading is :class:`~wordybird.recorder.format.RecordingStore`'s.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.codecs import BytesCodec
from zarr.core.sync import sync

from wordybird.atomic import fsync_folder
from wordybird.constants import MODES, STEPS_FIELD, Mode
from wordybird.errors import WordybirdError, no_folder
from wordybird.recorder.chunks import ChunkCodec, ChunkWriter, FieldChunks
from wordybird.recorder.decoding import Decoding
from wordybird.recorder.format import FORMAT_NAME, RecordingStore, format_version, is_recording
from wordybird.recorder.layout import (
    DEFAULT_KEYFRAME_INTERVAL,
    STEPS_SPEC,
    FieldSpec,
    chunk_shape,
    compressors_for,
)
from wordybird.storage import (
    PARTIAL_SUFFIX,
    Location,
    RecordingDisk,
    any_key,
    fault_point,
    gather_all,
    open_store,
)


class WritableStore(RecordingStore):
    """A recording opened for writing: one writer thread appends, commits and truncates.

    Readers in other threads or processes stay safe meanwhile: they look only at the
    committed positions. Created or opened with ``durable=True``, every file is fsynced
    before it is renamed into place, and a step's folders before the header that commits
    it, so that a power loss (not only a killed process) keeps every committed step.
    """

    def __init__(
        self,
        path: Location,
        group: zarr.AsyncGroup,
        disk: RecordingDisk,
        header: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        super().__init__(path, group, disk, header, metadata)
        self._attrs_lock = threading.Lock()
        self._field_chunks: dict[str, FieldChunks] = {}
        self._writer: ChunkWriter | None = None
        #: threads that encode a step's chunks (set before the first append; see knobs.py)
        self.codec_threads = 1

    def _new_decoding(self) -> Decoding:
        """The writer predicts in its own thread: it runs beside training, which keeps every
        core busy, and predictions spread over threads stalled training on every core."""
        return Decoding(self, writer=True)

    @classmethod
    def create(
        cls,
        where: str | os.PathLike[str] | Location,
        *,
        metadata: Mapping[str, Any] | None,
        mode: Mode,
        overwrite: bool = False,
        durable: bool = False,
    ) -> WritableStore:
        """Start a new, empty recording at ``where`` (a folder or an ``s3://`` URL)."""
        path = Location.of(where)
        if mode not in MODES:
            raise WordybirdError(f"unknown recording mode {mode!r}; choose one of {MODES}")
        local = path.local
        if local is not None:
            if local.exists():
                _make_room(path, overwrite, lambda: _remove(local), lambda: _empty_folder(local))
            if not local.parent.is_dir():
                raise WordybirdError(f"cannot create {path}: {no_folder(local.parent)}")
        disk = open_store(path, read_only=False, durable=durable)
        if local is None and sync(any_key(disk, "")):
            _make_room(path, overwrite, lambda: sync(disk.delete_dir("")), lambda: False)
        header = {
            "format": FORMAT_NAME,
            "format_version": format_version(mode),
            "mode": mode,
            "keyframe_interval": DEFAULT_KEYFRAME_INTERVAL,
            "committed": 0,
            "fields": {},
        }
        meta = _jsonable(dict(metadata or {}))
        try:
            group = sync(
                zasync.open_group(
                    store=disk,
                    mode="w-",
                    zarr_format=3,
                    attributes={"wordybird": header, "metadata": meta},
                )
            )
            store = cls(path, group, disk, header, meta)
            store._sync_folders()
            if durable and local is not None:  # the recording's name, in its folder
                fsync_folder(local.parent)
        except OSError as exc:
            raise WordybirdError(f"cannot create recording {path}: {exc}") from exc
        return store

    def update_metadata(self, entries: Mapping[str, Any]) -> None:
        self._write_header(self._header, {**self._metadata, **_jsonable(dict(entries))})

    def _commit(self, count: int) -> None:
        """Write the header saying that positions [0, count) are valid, with the layout."""
        fields = {name: spec.to_json() for name, spec in self.fields.items()}
        self._write_header({**self._header, "committed": count, "fields": fields}, self._metadata)

    def _write_header(self, header: dict[str, Any], metadata: dict[str, Any]) -> None:
        # One writer rewrites the whole attribute document; the store replaces
        # zarr.json atomically, so a reader sees the old or the new header, never half. The
        # copy in memory changes only once the write succeeded: after a failure (a full
        # disk) `committed` and the errors quoting it still tell what the disk holds.
        with self._attrs_lock:
            sync(self._group.update_attributes({"wordybird": header, "metadata": metadata}))
            self._sync_folders()
            self._header, self._metadata = header, metadata

    def _sync_folders(self) -> None:
        """Durable mode: flush the folders that got new file names since the last call (a
        renamed file is found again after a power loss only if its folder entry was)."""
        folders = self._disk.take_folders()
        if folders:
            sync(gather_all(*(asyncio.to_thread(fsync_folder, f) for f in sorted(folders))))

    # -- arrays ---------------------------------------------------------------------------

    def define_fields(self, specs: Mapping[str, FieldSpec]) -> None:
        """Create the arrays for a recording's fields (at its first step).

        The header does not name them yet: the first step's commit writes the layout with
        ``committed = 1``. A process killed before that leaves arrays that no header names;
        :meth:`discard_uncommitted` removes them and the next first step starts afresh.
        """

        async def create() -> None:
            for spec in [STEPS_SPEC, *specs.values()]:
                fault_point("create_array")
                self._arrays[spec.name] = await self._group.create_array(
                    spec.name,
                    shape=(0, *spec.shape),
                    chunks=chunk_shape(spec),
                    dtype=spec.stored_dtype,
                    fill_value=0,
                    compressors=compressors_for(spec),
                    serializer=BytesCodec(endian="little"),
                    attributes={"wordybird_encoding": spec.encoding, "wordybird_dtype": spec.dtype},
                )

        sync(create())
        self.fields = dict(specs)

    def append(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one step at position ``committed`` and then commit it.

        Order matters for crash safety: grow the arrays, write every chunk (and in durable
        mode flush them), and only then advance ``committed``.
        """
        n = self.committed
        stored = {STEPS_FIELD: np.int64(step), **self._decoding.encode(n, step, arrays)}
        targets = {name: self._array(name) for name in stored}

        async def grow() -> None:
            # resize() updates each array object's metadata in place
            await gather_all(*(a.resize((n + 1, *a.shape[1:])) for a in targets.values()))

        fault_point("resize")
        sync(grow())
        fault_point("resized")
        if self._writer is None:
            self._writer = ChunkWriter(self._disk, self.codec_threads)
        self._writer.write(self._chunks(n, stored))
        self._sync_folders()
        fault_point("commit")
        self._commit(n + 1)
        fault_point("committed")

    def _chunks(
        self, position: int, stored: Mapping[str, np.ndarray]
    ) -> Iterator[tuple[str, np.ndarray, ChunkCodec]]:
        """Every chunk of a step as stored, with its key and codec."""
        for name, value in stored.items():
            field = self._field_chunks.get(name)
            if field is None:
                read = functools.partial(self.read_stored, name)
                field = self._field_chunks[name] = FieldChunks(self._array(name), read)
            for key, data in field.chunks(position, np.asarray(value)):
                yield key, data, field.codec

    @property
    def codec_pool_cpu_seconds(self) -> float:
        """CPU seconds the codec threads spent so far (0 when chunks are encoded in the
        writer's own thread)."""
        return 0.0 if self._writer is None else self._writer.pool_cpu_seconds

    def close(self) -> None:
        """Stop the codec threads (the store stays readable)."""
        if self._writer is not None:
            self._writer.close()

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` committed positions; delete the rest from disk."""
        self._commit(max(0, min(count, self.committed)))  # uncommit first: a crash below
        self.forget_decoded()  # leaves a consistent store
        fault_point("truncate")
        self.discard_uncommitted()

    def discard_uncommitted(self) -> None:
        """Remove what a killed writer left beyond the header: zarr's temporaries, arrays the
        header does not name (a first step killed before its commit) and positions past
        ``committed``. Every removal can be redone, so a kill in here is repaired by the next
        call."""
        if self.path.local is not None:  # zarr's atomic-write temporaries (S3 has none)
            for leftover in self.path.local.rglob(f"*{PARTIAL_SUFFIX}"):
                leftover.unlink(missing_ok=True)
        named = [STEPS_FIELD, *self.fields] if self.fields else []
        sync(_remove_unnamed(self._disk, "", set(named)))
        n = self.committed
        targets = [self._array(name) for name in named]

        async def shrink() -> None:
            for array in targets:
                if array.shape[0] != n:
                    fault_point("shrink")
                    await array.resize((n, *array.shape[1:]))

        sync(shrink())


async def _remove_unnamed(disk: RecordingDisk, prefix: str, named: set[str]) -> None:
    """Remove the folders under ``prefix`` that are neither a named array nor a group on
    the way to one (fields may be nested: ``"transformer.wte.weight/grad"``). Files (a
    group's ``zarr.json``) stay."""
    children = sorted([child async for child in disk.list_dir(prefix)])
    for child in children:
        name = prefix + child
        if child == "zarr.json" or name in named:
            continue
        if any(n.startswith(name + "/") for n in named):
            await _remove_unnamed(disk, name + "/", named)
        elif await any_key(disk, name + "/"):  # a folder, not a stray file
            fault_point("remove_orphan")
            await disk.delete_dir(name)


def _make_room(
    path: Location,
    overwrite: bool,
    remove: Callable[[], object],
    is_empty: Callable[[], bool],
) -> None:
    """Clear an existing ``path`` for a new recording: only a recording or an empty folder
    may be replaced, so a mistyped path (the working folder, a home, a bucket's other
    data) is never deleted."""
    recording = is_recording(path)
    if not overwrite:
        raise WordybirdError(
            f"{path} already holds {'a recording' if recording else 'something'}; resume it, "
            "pick another path, or overwrite it explicitly"
        )
    if recording:
        remove()
    elif not is_empty():
        raise WordybirdError(
            f"refusing to overwrite {path}: it is neither a wordybird recording nor an empty "
            "folder (delete it yourself if it should go)"
        )


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _jsonable(value: Any) -> Any:
    """Metadata as JSON: numpy/torch scalars to Python numbers, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    if isinstance(value, Sequence):
        return [_jsonable(v) for v in value]
    return str(value)
