"""The recording's on-disk format, implemented in this one module (specified in FORMAT.md).

A recording is one Zarr v3 group. Every field is an array whose first axis is the recorded
step's position; ``recorded_steps`` holds the step numbers. The group's attributes hold a
header (``attrs["wordybird"]``) with the format version, the field layout and ``committed``,
the number of leading positions whose data is completely written. The header is rewritten
(atomically, by zarr's LocalStore) only after all of a step's chunks are on disk, and it is
the only truth: a process killed at any moment leaves a store whose first ``committed``
positions are exact; positions past them, and arrays the header does not name, are ignored
by readers and removed on resume (FORMAT.md, "Commit protocol").

The writer (``writer.py``) and the reader (``reader.py``) reach the disk only through
:class:`RecordingStore`.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import Buffer
from zarr.core.sync import sync
from zarr.storage import LocalStore
from zarr.storage._local import _atomic_write  # its *.partial naming: resume removes them

from wordybird.errors import WordybirdError
from wordybird.recorder import bf16

FORMAT_NAME = "wordybird.recording"
FORMAT_VERSION = 1
STEPS_FIELD = "recorded_steps"

Mode = Literal["default", "compact"]
Encoding = Literal["raw", "delta"]
MODES: tuple[str, ...] = ("default", "compact")

#: A step's slice of a large field is cut into chunks of at most this many bytes, so that
#: the compressor runs on several cores and one step is read without touching any other.
CHUNK_TARGET_BYTES = 2 << 20
#: Fields whose one step is this small share chunks across consecutive steps (a chunk per
#: step would mean thousands of tiny files); a step append rewrites that small chunk.
SMALL_STEP_BYTES = 16 << 10
#: Steps per chunk for small fields.
SMALL_FIELD_STEPS_PER_CHUNK = 1024
#: In compact mode every K-th position is stored whole (a keyframe); the others are stored
#: as the difference of their bits from the previous step's (see :func:`delta_encode`), so
#: a random step is decoded from at most K chunks and a sequential scan from one per step.
DEFAULT_KEYFRAME_INTERVAL = 16
#: Write every chunk, even one that equals the fill value. zarr's default compares each
#: chunk with the fill value before writing it, an extra pass over every byte: without it
#: the recorder went from ~213 to ~295 MB/s (median, benchmarks/bench_recorder.py). The
#: cost is a few tiny all-zero chunks on disk (an initial step's zero grads).
ARRAY_CONFIG = {"write_empty_chunks": True}


@dataclass(frozen=True)
class FieldSpec:
    """One recorded field: its per-step shape and dtype, and how it is encoded on disk."""

    name: str
    dtype: str  # the logical dtype as a numpy name ("bfloat16", "float32", "int64", …)
    shape: tuple[int, ...]  # one step's shape
    encoding: Encoding = "raw"

    @property
    def numpy_dtype(self) -> np.dtype:
        return bf16.numpy_dtype(self.dtype)

    @property
    def stored_dtype(self) -> np.dtype:
        """The dtype of the Zarr array: the logical one, or unsigned bits for deltas."""
        if self.encoding == "delta":
            return np.dtype(f"<u{self.numpy_dtype.itemsize}")
        return self.numpy_dtype

    @property
    def step_nbytes(self) -> int:
        return math.prod(self.shape) * self.numpy_dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "encoding": self.encoding}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> FieldSpec:
        return cls(
            name,
            str(data["dtype"]),
            tuple(int(s) for s in data["shape"]),
            data.get("encoding", "raw"),
        )


def chunk_shape(spec: FieldSpec) -> tuple[int, ...]:
    """Chunking: one step (or a slab of it) per chunk for big fields, many steps for small."""
    if spec.step_nbytes <= SMALL_STEP_BYTES:
        return (SMALL_FIELD_STEPS_PER_CHUNK, *spec.shape)
    if not spec.shape:
        return (1,)
    pieces = max(1, math.ceil(spec.step_nbytes / CHUNK_TARGET_BYTES))
    rows = max(1, math.ceil(spec.shape[0] / pieces))
    return (1, rows, *spec.shape[1:])


def compressors_for(spec: FieldSpec) -> tuple[Any, ...]:
    """Core Zarr codecs only (any Zarr v3 reader decodes them), then a crc32c checksum.

    Chosen by measurement on real Wordybird tensors (benchmarks/codecs.py). Values: blosc
    zstd level 3 with bit shuffle, which gathers the sign and exponent bits (few distinct
    values in a bf16 tensor) into long compressible runs: 1.9x at ~500 MB/s per core.
    Deltas (compact mode) are small integers whose high bytes are almost all zero: byte
    shuffle gathers those, and level 1 already packs them (3.4x at ~420 MB/s per core).
    """
    if spec.step_nbytes <= SMALL_STEP_BYTES:
        return (ZstdCodec(level=3), Crc32cCodec())
    itemsize = spec.stored_dtype.itemsize
    if spec.encoding == "delta":
        blosc = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=itemsize)
    else:
        blosc = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=itemsize)
    return (blosc, Crc32cCodec())


def check_field_name(name: object) -> None:
    """Refuse a field name that cannot be one array folder directly in the group.

    Resume removes every folder of the group that the header does not name (the leftovers
    of a killed first step), so a name with a ``/`` (a nested folder) would lose its data;
    zarr reserves names starting with ``__``; ``.``-names and ``*.partial`` collide with
    file-system and zarr temporaries.
    """
    if name == STEPS_FIELD:
        raise WordybirdError(
            f"{STEPS_FIELD!r} is written from the step argument; it cannot be recorded as a field"
        )
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or name.startswith((".", "__"))
        or name.endswith(".partial")
        or name == "zarr.json"
    ):
        raise WordybirdError(
            f"field name {name!r} cannot be an array of the recording: use a non-empty string "
            "without '/', not starting with '.' or '__'"
        )


def field_specs_for(arrays: Mapping[str, np.ndarray], mode: Mode) -> dict[str, FieldSpec]:
    """The layout fixed by a recording's first step."""
    specs = {}
    for name, value in arrays.items():
        check_field_name(name)
        big = value.nbytes > SMALL_STEP_BYTES
        encoding: Encoding = "delta" if mode == "compact" and big else "raw"
        specs[name] = FieldSpec(name, bf16.dtype_name(value.dtype), tuple(value.shape), encoding)
    return specs


def delta_encode(bits: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Compact mode's encoding of a step: its bits minus the previous step's, zigzagged.

    Within one sign, a float's bit pattern counts lattice points, so the wrapping
    difference of two steps' bits is each coordinate's move in ULPs: 0 for the many that
    stay put, small for the rest. Zigzag (0, -1, 1, -2 … → 0, 1, 2, 3 …) keeps small moves
    of either direction small as unsigned numbers, so nearly all high bytes are zero. It
    beat XOR with the previous step by 1.5x on real Wordybird steps (benchmarks/codecs.py):
    a one-ULP move across a mantissa carry flips many bits but differs by one.
    """
    width = bits.dtype.itemsize * 8
    signed = np.dtype(f"<i{bits.dtype.itemsize}")
    diff = (bits - previous).view(signed)  # unsigned arithmetic wraps: exact for any pair
    return ((diff << 1) ^ (diff >> (width - 1))).view(bits.dtype)


def delta_decode(stored: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Invert :func:`delta_encode`: the step's bits from its delta and the previous bits."""
    diff = (stored >> 1) ^ (np.zeros_like(stored) - (stored & 1))
    return previous + diff


def _fault_point(point: str) -> None:
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


class _LocalStore(LocalStore):
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
        _fault_point(f"write:{key}")
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


def _fsync_folder(path: Path) -> None:
    """Flush a folder's entries (the names of files created or renamed in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _all(*steps: Awaitable[Any]) -> None:
    """Await every one of ``steps``, then raise the first failure.

    ``asyncio.gather`` raises at the first failure and leaves the others running: a chunk
    write could land after the error was reported, or after a resume had cut the arrays
    back. Waiting for all of them leaves the store still once a call returns or raises.
    """
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


#: ``recorded_steps``, stored like any small field.
STEPS_SPEC = FieldSpec(STEPS_FIELD, "int64", ())


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
        disk: _LocalStore,
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
            raise WordybirdError(f"cannot create {path}: folder {path.parent} does not exist")
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "mode": mode,
            "keyframe_interval": keyframe_interval,
            "committed": 0,
            "fields": {},
        }
        meta = _jsonable(dict(metadata or {}))
        disk = _LocalStore(path, durable=durable)
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
                _fsync_folder(path.parent)
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
        disk = _LocalStore(path, read_only=read_only, durable=durable)
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
            sync(_all(*(asyncio.to_thread(_fsync_folder, f) for f in sorted(folders))))

    # -- arrays ---------------------------------------------------------------------------

    def _array(self, name: str) -> zarr.AsyncArray:
        if name not in self._arrays:
            self._arrays[name] = sync(self._group.getitem(name)).with_config(ARRAY_CONFIG)
        return self._arrays[name]

    def open_arrays(self) -> bool:
        """Open every named array now, for a reader; whether each holds the committed positions.

        An opened array keeps the length it was opened with, so the positions below
        ``committed`` stay readable (as old or re-recorded steps) even when a truncation
        shrinks the arrays on disk later; opened lazily, one could already be shorter. An
        array shorter now was shrunk by a truncation since the header was read.
        """
        names = [STEPS_FIELD, *self.fields] if self.fields else []
        return all(self._array(name).shape[0] >= self.committed for name in names)

    def define_fields(self, specs: Mapping[str, FieldSpec]) -> None:
        """Create the arrays for a recording's fields (at its first step).

        The header does not name them yet: the first step's commit writes the layout with
        ``committed = 1``. A process killed before that leaves arrays that no header names;
        :meth:`discard_uncommitted` removes them and the next first step starts afresh.
        """

        async def create() -> None:
            for spec in [STEPS_SPEC, *specs.values()]:
                _fault_point("create_array")
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
            await _all(*(a.resize((n + 1, *a.shape[1:])) for a in targets.values()))

        async def write() -> None:
            await _all(
                targets[STEPS_FIELD].setitem(n, np.int64(step)),
                *(targets[name].setitem(n, value) for name, value in arrays.items()),
            )

        _fault_point("resize")
        sync(grow())
        _fault_point("resized")
        sync(write())
        self._sync_folders()
        _fault_point("commit")
        self._commit(n + 1)
        _fault_point("committed")

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` committed positions; delete the rest from disk."""
        self._commit(max(0, min(count, self.committed)))  # uncommit first: a crash below
        self._previous.clear()  # leaves a consistent store
        _fault_point("truncate")
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
                _fault_point("remove_orphan")
                shutil.rmtree(child)
        n = self.committed
        targets = [self._array(name) for name in named]

        async def shrink() -> None:
            for array in targets:
                if array.shape[0] != n:
                    _fault_point("shrink")
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
        try:
            return sync(array.getitem(index))
        except (ValueError, RuntimeError, OSError) as exc:  # checksum, codec, I/O errors
            raise WordybirdError(
                f"{self.path}: field {name!r} at {self._where(name, index)} cannot be read "
                f"(the recording is damaged there): {exc}"
            ) from exc

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
