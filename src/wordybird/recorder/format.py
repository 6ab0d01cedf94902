"""The recording's store and its commit protocol (specified in FORMAT.md).

A recording is one Zarr v3 group. Every field is an array whose first axis is the recorded
step's position; ``recorded_steps`` holds the step numbers. The group's attributes hold a
header (``attrs["wordybird"]``) with the format version, the field layout and ``committed``,
the number of leading positions whose data is completely written. The header is rewritten
(atomically, by zarr's LocalStore) only after all of a step's chunks are on disk, and it is
the only truth: a process killed at any moment leaves a store whose first ``committed``
positions are exact; positions past them, and arrays the header does not name, are ignored
by readers and removed on resume (FORMAT.md, "Commit protocol").

The writer (``writer.py``) and the reader (``reader.py``) reach the disk only through
:class:`RecordingStore`; the layout it applies is ``layout.py``'s, compact mode's codec
``delta.py``'s, and its file access ``storage.py``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.codecs import BytesCodec
from zarr.core.sync import sync

from wordybird.atomic import fsync_folder
from wordybird.errors import DamagedRecordingError, WordybirdError, no_folder
from wordybird.recorder import (
    bf16,  # noqa: F401  (registers the Zarr bfloat16 type)
    storage,
)
from wordybird.recorder.delta import delta_decode, delta_encode
from wordybird.recorder.layout import (
    ARRAY_CONFIG,
    DEFAULT_KEYFRAME_INTERVAL,
    MODES,
    STEPS_SPEC,
    FieldSpec,
    Mode,
    chunk_shape,
    compressors_for,
)
from wordybird.recording import STEPS_FIELD

FORMAT_NAME = "wordybird.recording"
FORMAT_VERSION = 1


class RecordingStore:
    """A recording on disk: create, open, append a step, commit, truncate, read.

    Not thread-safe for writing: one writer thread appends. Reading is safe from any thread
    while a writer appends, because readers look only at committed positions.

    Created or opened with ``durable=True``, every file is fsynced before it is renamed
    into place, and a step's folders before the header that commits it, so that a power
    loss (not only a killed process) keeps every committed step.
    """

    def __init__(
        self,
        path: Path,
        group: zarr.AsyncGroup,
        disk: storage.LocalStore,
        header: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        self.path = path
        self._group = group
        self._disk = disk
        self._header = header
        self._metadata = metadata
        self._arrays: dict[str, zarr.AsyncArray] = {}
        self._attrs_lock = threading.Lock()
        # compact mode: each delta field's last encoded or decoded (position, raw bits)
        self._previous: dict[str, tuple[int, np.ndarray]] = {}
        self.fields: dict[str, FieldSpec] = {
            name: FieldSpec.from_json(name, data) for name, data in header["fields"].items()
        }

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None,
        mode: Mode,
        keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
        overwrite: bool = False,
        durable: bool = False,
    ) -> RecordingStore:
        """Start a new, empty recording at ``path``."""
        path = Path(path)
        if mode not in MODES:
            raise WordybirdError(f"unknown recording mode {mode!r}; choose one of {MODES}")
        if path.exists():
            _make_room(path, overwrite)
        if not path.parent.is_dir():
            raise WordybirdError(f"cannot create {path}: {no_folder(path.parent)}")
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "mode": mode,
            "keyframe_interval": keyframe_interval,
            "committed": 0,
            "fields": {},
        }
        meta = _jsonable(dict(metadata or {}))
        disk = storage.LocalStore(path, durable=durable)
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
            if durable:  # the recording's own name, in the folder that holds it
                fsync_folder(path.parent)
        except OSError as exc:
            raise WordybirdError(f"cannot create recording {path}: {exc}") from exc
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, read_only: bool = True, durable: bool = False
    ) -> RecordingStore:
        """Open an existing recording; clear errors for anything that is not one."""
        path = Path(path)
        if not path.exists():
            raise WordybirdError(f"{path} does not exist")
        if not (path / "zarr.json").is_file():
            raise WordybirdError(f"{path} is not a wordybird recording (no zarr.json)")
        disk = storage.LocalStore(path, read_only=read_only, durable=durable)
        try:
            group = sync(
                zasync.open_group(store=disk, mode="r" if read_only else "r+", zarr_format=3)
            )
        except Exception as exc:
            raise WordybirdError(f"{path} is not a readable Zarr v3 group: {exc}") from exc
        attrs = dict(group.attrs)
        header = attrs.get("wordybird")
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise WordybirdError(f"{path} is a Zarr group but not a wordybird recording")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise WordybirdError(
                f"{path} uses recording format version {version}; this wordybird reads "
                f"version {FORMAT_VERSION} (upgrade wordybird to read it)"
            )
        metadata = dict(attrs.get("metadata") or {})
        return cls(path, group, disk, dict(header), metadata)

    # -- header ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._header["mode"]

    @property
    def keyframe_interval(self) -> int:
        return int(self._header["keyframe_interval"])

    @property
    def committed(self) -> int:
        """Positions [0, committed) are completely written (as the header on disk says)."""
        return int(self._header["committed"])

    @property
    def uncommitted(self) -> int:
        """Positions past ``committed`` that arrays already hold (a step in flight, or the
        leftover of a writer killed mid-step)."""
        if not self.fields:
            return 0
        return max(0, self._array(STEPS_FIELD).shape[0] - self.committed)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def update_metadata(self, entries: Mapping[str, Any]) -> None:
        self._write_header(self._header, {**self._metadata, **_jsonable(dict(entries))})

    def _commit(self, count: int) -> None:
        """Write the header saying that positions [0, count) are valid, with the layout."""
        fields = {name: spec.to_json() for name, spec in self.fields.items()}
        self._write_header({**self._header, "committed": count, "fields": fields}, self._metadata)

    def _write_header(self, header: dict[str, Any], metadata: dict[str, Any]) -> None:
        # One writer rewrites the whole attribute document; zarr's LocalStore replaces
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
            sync(storage.gather_all(*(asyncio.to_thread(fsync_folder, f) for f in sorted(folders))))

    # -- arrays ---------------------------------------------------------------------------

    def _array(self, name: str) -> zarr.AsyncArray:
        if name not in self._arrays:
            try:
                array = sync(self._group.getitem(name))
            except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON, zarr, I/O errors
                raise DamagedRecordingError(
                    f"{self.path}: field {name!r} cannot be opened (its array metadata is "
                    f"damaged or missing): {exc!r}"
                ) from exc
            self._arrays[name] = array.with_config(ARRAY_CONFIG)
        return self._arrays[name]

    def _chunk_files(self, name: str, positions: range) -> list[Path]:
        """The chunk files that hold ``positions`` of an array. A sound recording has every
        one of them (chunks equal to the fill value are written too: ARRAY_CONFIG), so a
        missing one is damage, which zarr alone would read silently as zeros."""
        array = self._array(name)
        grid = array.metadata.chunk_grid.chunk_shape
        across = [
            range(math.ceil(size / rows))
            for size, rows in zip(array.shape[1:], grid[1:], strict=True)
        ]
        return [
            self.path / name / array.metadata.encode_chunk_key((row, *coords))
            for row in range(positions[0] // grid[0], positions[-1] // grid[0] + 1)
            for coords in itertools.product(*across)
        ]

    def damaged(self, name: str) -> list[tuple[range, str]]:
        """The committed positions of one array that cannot be read, chunk row by chunk row,
        each with the reason; empty for a sound array. Reads (and so checksums) every chunk."""
        n = self.committed
        try:
            array = self._array(name)
        except DamagedRecordingError as exc:
            return [(range(n), str(exc))] if n else []
        rows = array.metadata.chunk_grid.chunk_shape[0]
        found = []
        if array.shape[0] < n:
            found.append(
                (range(array.shape[0], n), f"the array holds only {array.shape[0]} positions")
            )
            n = array.shape[0]
        for start in range(0, n, rows):
            block = range(start, min(start + rows, n))
            try:
                self._get(name, slice(block.start, block.stop))
            except DamagedRecordingError as exc:
                found.append((block, str(exc)))
        return found

    def open_arrays(self) -> bool:
        """Open every named array now, for a reader; whether each holds the committed positions.

        An opened array keeps the length it was opened with, so the positions below
        ``committed`` stay readable (as old or re-recorded steps) even when a truncation
        shrinks the arrays on disk later; opened lazily, one could already be shorter. An
        array shorter now was shrunk by a truncation since the header was read.
        """
        names = [STEPS_FIELD, *self.fields] if self.fields else []
        held = True
        for name in names:
            try:
                held = held and self._array(name).shape[0] >= self.committed
            except DamagedRecordingError:
                continue  # broken array metadata: reported when the field is read
        return held

    def define_fields(self, specs: Mapping[str, FieldSpec]) -> None:
        """Create the arrays for a recording's fields (at its first step).

        The header does not name them yet: the first step's commit writes the layout with
        ``committed = 1``. A process killed before that leaves arrays that no header names;
        :meth:`discard_uncommitted` removes them and the next first step starts afresh.
        """

        async def create() -> None:
            for spec in [STEPS_SPEC, *specs.values()]:
                storage.fault_point("create_array")
                self._arrays[spec.name] = await self._group.create_array(
                    spec.name,
                    shape=(0, *spec.shape),
                    chunks=chunk_shape(spec),
                    dtype=spec.stored_dtype,
                    fill_value=0,
                    compressors=compressors_for(spec),
                    serializer=BytesCodec(endian="little"),
                    attributes={"wordybird_encoding": spec.encoding, "wordybird_dtype": spec.dtype},
                    config=ARRAY_CONFIG,
                )

        sync(create())
        self.fields = dict(specs)

    def append(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one step at position ``committed`` and then commit it.

        Order matters for crash safety: grow the arrays, write every chunk (and in durable
        mode flush them), and only then advance ``committed``.
        """
        n = self.committed
        arrays = {name: self._encode(n, name, value) for name, value in arrays.items()}
        targets = {name: self._array(name) for name in [STEPS_FIELD, *arrays]}

        async def grow() -> None:
            # resize() updates each array object's metadata in place
            await storage.gather_all(*(a.resize((n + 1, *a.shape[1:])) for a in targets.values()))

        async def write() -> None:
            await storage.gather_all(
                targets[STEPS_FIELD].setitem(n, np.int64(step)),
                *(targets[name].setitem(n, value) for name, value in arrays.items()),
            )

        storage.fault_point("resize")
        sync(grow())
        storage.fault_point("resized")
        sync(write())
        self._sync_folders()
        storage.fault_point("commit")
        self._commit(n + 1)
        storage.fault_point("committed")

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` committed positions; delete the rest from disk."""
        self._commit(max(0, min(count, self.committed)))  # uncommit first: a crash below
        self._previous.clear()  # leaves a consistent store
        storage.fault_point("truncate")
        self.discard_uncommitted()

    def discard_uncommitted(self) -> None:
        """Remove what a killed writer left beyond the header: zarr's temporaries, arrays the
        header does not name (a first step killed before its commit) and positions past
        ``committed``. Every removal can be redone, so a kill in here is repaired by the next
        call."""
        for leftover in self.path.rglob("*.partial"):  # zarr's atomic-write temporaries
            leftover.unlink(missing_ok=True)
        named = [STEPS_FIELD, *self.fields] if self.fields else []
        for child in sorted(self.path.iterdir()):
            if child.is_dir() and child.name not in named:
                storage.fault_point("remove_orphan")
                shutil.rmtree(child)
        n = self.committed
        targets = [self._array(name) for name in named]

        async def shrink() -> None:
            for array in targets:
                if array.shape[0] != n:
                    storage.fault_point("shrink")
                    await array.resize((n, *array.shape[1:]))

        sync(shrink())

    def steps(self) -> np.ndarray:
        """The step numbers of the committed positions."""
        if not self.committed:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._get(STEPS_FIELD, slice(0, self.committed)), dtype=np.int64)

    def read(self, name: str, index: int | slice) -> np.ndarray:
        """The values at positions ``index`` (an int within the committed range, or a slice)."""
        spec = self.fields.get(name)
        if spec is None or spec.encoding == "raw":
            return self._get(name, index)
        if isinstance(index, slice):
            positions = range(self.committed)[index]
            out = np.empty((len(positions), *spec.shape), dtype=spec.numpy_dtype)
            for row, position in enumerate(positions):
                out[row] = self._decode(spec, position)
            return out
        return self._decode(spec, index)

    def _get(self, name: str, index: int | slice) -> np.ndarray:
        """One array's stored values; a chunk that cannot be read (damaged: its checksum
        fails) is reported with its field and step instead of zarr's bare codec error."""
        array = self._array(name)
        positions = range(array.shape[0])[index]
        if isinstance(positions, int):
            positions = range(positions, positions + 1)
        try:
            for chunk in self._chunk_files(name, positions) if positions else []:
                if not chunk.is_file():
                    raise FileNotFoundError(f"chunk file {chunk.relative_to(self.path)} is missing")
            return sync(array.getitem(index))
        except (ValueError, RuntimeError, OSError) as exc:  # checksum, codec, I/O errors
            if positions and positions[-1] >= self._committed_on_disk():
                raise WordybirdError(
                    f"{self.path}: field {name!r} at position {positions[-1]} was removed by "
                    "a truncation after this reader opened the recording; refresh() it"
                ) from exc
            raise DamagedRecordingError(
                f"{self.path}: field {name!r} at {self._where(name, index)} cannot be read "
                f"(the recording is damaged there): {exc}"
            ) from exc

    def _committed_on_disk(self) -> int:
        """``committed`` as the header on disk says now (a reader's copy may be older)."""
        try:
            header = json.loads((self.path / "zarr.json").read_bytes())
            return int(header["attributes"]["wordybird"]["committed"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.committed

    def _where(self, name: str, index: int | slice) -> str:
        """Positions ``index`` in words, with their step numbers when those can be read."""
        if isinstance(index, slice):
            positions = range(self.committed)[index]
        else:
            positions = range(index, index + 1)
        first, last = positions[0], positions[-1]
        where = f"position {first}" if first == last else f"positions {first}..{last}"
        if name == STEPS_FIELD:
            return where
        try:
            steps = self._get(STEPS_FIELD, slice(first, last + 1))
        except WordybirdError:
            return where
        span = f"step {steps[0]}" if first == last else f"steps {steps[0]}..{steps[-1]}"
        return f"{span} ({where})"

    def _decode(self, spec: FieldSpec, position: int) -> np.ndarray:
        """A compact-mode step: add the stored deltas back up from its keyframe.

        The last decoded step of each field is kept, so reading steps in order (export,
        analysis) costs one chunk per step; a random step costs up to one keyframe interval.
        """
        first = position - position % self.keyframe_interval
        held = self._previous.get(spec.name)
        if held is not None and first <= held[0] <= position:
            start, bits = held[0] + 1, held[1].copy()
        else:
            start, bits = first + 1, self._get(spec.name, first)
        for p in range(start, position + 1):
            bits = delta_decode(self._get(spec.name, p), bits)
        self._previous[spec.name] = (position, bits)
        return bits.copy().view(spec.numpy_dtype)

    def _encode(self, position: int, name: str, value: np.ndarray) -> np.ndarray:
        """A step as stored: itself, or in compact mode its delta from the previous step."""
        spec = self.fields[name]
        if spec.encoding == "raw":
            return value
        bits = np.ascontiguousarray(value).view(spec.stored_dtype)
        held = self._previous.get(name)
        if position % self.keyframe_interval == 0:
            stored = bits
        else:
            if held is None or held[0] != position - 1:  # resumed or truncated since
                self._decode(spec, position - 1)
                held = self._previous[name]
            stored = delta_encode(bits, held[1])
        self._previous[name] = (position, bits.copy())
        return stored

    def stored_nbytes(self, name: str) -> int:
        """Bytes the field's array takes on disk (chunks and metadata)."""
        return sum(f.stat().st_size for f in (self.path / name).rglob("*") if f.is_file())


def is_recording(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a wordybird recording's group metadata."""
    p = Path(path) / "zarr.json"
    return p.is_file() and FORMAT_NAME in p.read_text(errors="replace")


def _make_room(path: Path, overwrite: bool) -> None:
    """Clear an existing ``path`` for a new recording: only a recording or an empty folder
    may be replaced, so a mistyped path (the working folder, a home) is never deleted."""
    recording = is_recording(path)
    if not overwrite:
        raise WordybirdError(
            f"{path} already holds {'a recording' if recording else 'something'}; resume it, "
            "pick another path, or overwrite it explicitly"
        )
    if recording:
        _remove(path)
    elif not path.is_dir() or any(path.iterdir()):
        raise WordybirdError(
            f"refusing to overwrite {path}: it is neither a wordybird recording nor an empty "
            "folder (delete it yourself if it should go)"
        )


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
