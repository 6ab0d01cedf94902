"""The recording's on-disk format, implemented in this one module (specified in FORMAT.md).

A recording is one Zarr v3 group. Every field is an array whose first axis is the recorded
step's position; ``recorded_steps`` holds the step numbers. The group's attributes hold a
header (``attrs["wordybird"]``) with the format version, the field layout and ``committed``,
the number of leading positions whose data is completely written. ``committed`` is
rewritten (atomically, by zarr's LocalStore) only after all of a step's chunks are on disk,
so a process killed at any moment leaves a store whose first ``committed`` positions are
exact; anything past them is ignored by readers and cut away on resume.

The writer (``writer.py``) and the reader (``reader.py``) reach the disk only through
:class:`RecordingStore`.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

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


def field_specs_for(arrays: Mapping[str, np.ndarray], mode: Mode) -> dict[str, FieldSpec]:
    """The layout fixed by a recording's first step."""
    specs = {}
    for name, value in arrays.items():
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


class RecordingStore:
    """A recording on disk: create, open, append a step, commit, truncate, read.

    Not thread-safe for writing: one writer thread appends. Reading is safe from any thread
    while a writer appends, because readers look only at committed positions.
    """

    def __init__(
        self,
        path: Path,
        group: zarr.AsyncGroup,
        header: dict[str, Any],
        metadata: dict[str, Any],
        read_only: bool,
    ) -> None:
        self.path = path
        self._group = group
        self._header = header
        self._metadata = metadata
        self._read_only = read_only
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
    ) -> RecordingStore:
        """Start a new, empty recording at ``path``."""
        path = Path(path)
        if mode not in MODES:
            raise WordybirdError(f"unknown recording mode {mode!r}; choose one of {MODES}")
        if path.exists():
            if not overwrite:
                what = "a recording" if is_recording(path) else "something"
                raise WordybirdError(
                    f"{path} already holds {what}; resume it, pick another path, "
                    "or overwrite it explicitly"
                )
            _remove(path)
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
        try:
            group = sync(
                zasync.open_group(
                    store=str(path),
                    mode="w-",
                    zarr_format=3,
                    attributes={"wordybird": header, "metadata": meta},
                )
            )
        except OSError as exc:
            raise WordybirdError(f"cannot create recording {path}: {exc}") from exc
        return cls(path, group, header, meta, read_only=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = True) -> RecordingStore:
        """Open an existing recording; clear errors for anything that is not one."""
        path = Path(path)
        if not path.exists():
            raise WordybirdError(f"{path} does not exist")
        if not (path / "zarr.json").is_file():
            raise WordybirdError(f"{path} is not a wordybird recording (no zarr.json)")
        try:
            group = sync(
                zasync.open_group(store=str(path), mode="r" if read_only else "r+", zarr_format=3)
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
        return cls(path, group, dict(header), dict(attrs.get("metadata") or {}), read_only)

    # -- header ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._header["mode"]

    @property
    def keyframe_interval(self) -> int:
        return int(self._header["keyframe_interval"])

    @property
    def committed(self) -> int:
        """Positions [0, committed) are completely written."""
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
        self._metadata.update(_jsonable(dict(entries)))
        self._write_attrs()

    def _write_attrs(self) -> None:
        # One writer rewrites the whole attribute document; zarr's LocalStore replaces
        # zarr.json atomically, so a reader sees the old or the new header, never half.
        with self._attrs_lock:
            sync(
                self._group.update_attributes(
                    {"wordybird": self._header, "metadata": self._metadata}
                )
            )

    # -- arrays ---------------------------------------------------------------------------

    def _array(self, name: str) -> zarr.AsyncArray:
        if name not in self._arrays:
            self._arrays[name] = sync(self._group.getitem(name)).with_config(ARRAY_CONFIG)
        return self._arrays[name]

    def define_fields(self, specs: Mapping[str, FieldSpec]) -> None:
        """Create the arrays for a recording's fields (at its first step)."""

        async def create() -> None:
            steps = await self._group.create_array(
                STEPS_FIELD,
                shape=(0,),
                chunks=(SMALL_FIELD_STEPS_PER_CHUNK,),
                dtype="int64",
                fill_value=0,
                compressors=(ZstdCodec(level=3), Crc32cCodec()),
                serializer=BytesCodec(endian="little"),
            )
            made = {STEPS_FIELD: steps}
            for spec in specs.values():
                made[spec.name] = await self._group.create_array(
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
            self._arrays.update(made)

        sync(create())
        self.fields = dict(specs)
        self._header["fields"] = {name: spec.to_json() for name, spec in specs.items()}
        self._write_attrs()

    def append(self, step: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one step at position ``committed`` and then commit it.

        Order matters for crash safety: grow the arrays, write every chunk, and only then
        advance ``committed``.
        """
        n = self.committed
        arrays = {name: self._encode(n, name, value) for name, value in arrays.items()}

        targets = {name: self._array(name) for name in [STEPS_FIELD, *arrays]}

        async def write() -> None:
            # resize() updates each array object's metadata in place
            await asyncio.gather(*(a.resize((n + 1, *a.shape[1:])) for a in targets.values()))
            await asyncio.gather(
                targets[STEPS_FIELD].setitem(n, np.int64(step)),
                *(targets[name].setitem(n, value) for name, value in arrays.items()),
            )

        sync(write())
        self._header["committed"] = n + 1
        self._write_attrs()

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` committed positions; delete the rest from disk."""
        count = max(0, min(count, self.committed))
        self._header["committed"] = count
        self._previous.clear()
        self._write_attrs()  # uncommit first: a crash below leaves a consistent store
        self.discard_uncommitted()

    def discard_uncommitted(self) -> None:
        """Remove what a killed writer left past ``committed``: grown arrays, temp files."""
        for leftover in self.path.rglob("*.partial"):  # zarr's atomic-write temporaries
            leftover.unlink(missing_ok=True)
        n = self.committed
        if not self.fields:
            return

        targets = [self._array(name) for name in [STEPS_FIELD, *self.fields]]

        async def shrink() -> None:
            for array in targets:
                if array.shape[0] != n:
                    await array.resize((n, *array.shape[1:]))

        sync(shrink())

    def read(self, name: str, index: int | slice) -> np.ndarray:
        """The values at positions ``index`` (an int within the committed range, or a slice)."""
        spec = self.fields.get(name)
        if spec is None or spec.encoding == "raw":
            return sync(self._array(name).getitem(index))
        if isinstance(index, slice):
            positions = range(self.committed)[index]
            out = np.empty((len(positions), *spec.shape), dtype=spec.numpy_dtype)
            for row, position in enumerate(positions):
                out[row] = self._decode(spec, position)
            return out
        return self._decode(spec, index)

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
            start, bits = first + 1, sync(self._array(spec.name).getitem(first))
        for p in range(start, position + 1):
            bits = delta_decode(sync(self._array(spec.name).getitem(p)), bits)
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

    def reload(self) -> None:
        """Re-read the header and the arrays' metadata (to see steps committed since)."""
        fresh = RecordingStore.open(self.path, read_only=self._read_only)
        self._group, self._header, self._metadata = fresh._group, fresh._header, fresh._metadata
        self.fields = fresh.fields
        self._arrays.clear()

    def stored_nbytes(self, name: str) -> int:
        """Bytes the field's array takes on disk (chunks and metadata)."""
        return sum(f.stat().st_size for f in (self.path / name).rglob("*") if f.is_file())


def is_recording(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a wordybird recording's group metadata."""
    p = Path(path) / "zarr.json"
    return p.is_file() and FORMAT_NAME in p.read_text(errors="replace")


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
