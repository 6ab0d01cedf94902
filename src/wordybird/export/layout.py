"""The safetensors layout of an exported recording: one module knows it, writer and reader share it.

The file is what the researchers' notebook wrote with ``safetensors.torch.save_file``:
``recorded_steps`` [N] I64, every per-step field stacked to [N, ...] in its own dtype, and
the run's scalars (``learning_rate``, ``n_trained``, …) as 0-d tensors. The rest of the
run's metadata goes into the header's ``__metadata__`` (string → string, values JSON-encoded).

Tensors are laid out in the order the safetensors library itself uses (dtype by descending
rank in its enum, then name) and the header is serialised and padded the way it does, so an
export is byte for byte the file ``save_file`` would write from the same tensors in RAM,
and every tensor starts on an offset aligned to its element size.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from wordybird.dtypes import SAFETENSORS_DTYPES
from wordybird.errors import WordybirdError

#: Bytes of the little-endian header length that starts every safetensors file.
HEADER_LENGTH_BYTES = 8
#: The largest header a reader accepts (the safetensors library's own limit): a corrupt
#: length field must not make us allocate gigabytes.
MAX_HEADER_BYTES = 100_000_000
#: The header key that holds string → string metadata.
METADATA_KEY = "__metadata__"
#: The notebook's 0-d scalar tensors, taken from the run metadata of the same names.
SCALAR_METADATA: dict[str, np.dtype] = {
    "learning_rate": np.dtype(np.float32),
    "weight_decay": np.dtype(np.float32),
    "adam_beta1": np.dtype(np.float32),
    "adam_beta2": np.dtype(np.float32),
    "n_trained": np.dtype(np.int64),
    "n_untrained": np.dtype(np.int64),
    "starting_step": np.dtype(np.int64),
}

_DTYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in SAFETENSORS_DTYPES}
_DTYPE_RANK = {name: rank for rank, (name, _) in enumerate(SAFETENSORS_DTYPES)}
_NUMPY_DTYPES = dict(SAFETENSORS_DTYPES)


def safetensors_dtype(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype ("BF16", "F32", …)."""
    try:
        return _DTYPE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise WordybirdError(f"a safetensors file cannot hold {np.dtype(dtype)} values") from None


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype name."""
    try:
        return _NUMPY_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown safetensors dtype {name!r}") from None


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: its name, dtype, full shape, and where its bytes lie."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int = 0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def end(self) -> int:
        return self.begin + self.nbytes


def plan(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """The entries in file order with their data offsets (contiguous from 0, as save_file)."""
    ordered = sorted(entries, key=lambda e: (_DTYPE_RANK[safetensors_dtype(e.dtype)], e.name))
    placed, offset = [], 0
    for entry in ordered:
        placed.append(TensorEntry(entry.name, entry.dtype, entry.shape, offset))
        offset += entry.nbytes
    return placed


def encode_header(placed: Sequence[TensorEntry], metadata: Mapping[str, str]) -> bytes:
    """Header length + JSON header, padded with spaces to a multiple of 8 like the library."""
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = dict(sorted(metadata.items()))
    for entry in placed:
        header[entry.name] = {
            "dtype": safetensors_dtype(entry.dtype),
            "shape": list(entry.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class LayoutError(ValueError):
    """A file that does not follow the safetensors layout (the reader names the file)."""


@dataclass(frozen=True)
class FileLayout:
    """What a safetensors header says: each tensor's place, and the string metadata."""

    entries: dict[str, TensorEntry]  # in file order
    metadata: dict[str, str]
    data_start: int  # file offset of the data region (8 + header length)


def decode_header(file: BinaryIO, file_size: int) -> FileLayout:
    """Parse and validate a safetensors header without reading (or mapping) any data.

    Checks what the safetensors library checks, so a file accepted here is one it reads
    too: known dtypes, byte ranges that match each shape, data contiguous from offset 0,
    and a file exactly as long as the header announces (a truncated export is refused).
    """
    prefix = file.read(HEADER_LENGTH_BYTES)
    if len(prefix) < HEADER_LENGTH_BYTES:
        raise LayoutError(f"it has {file_size} bytes, too few for a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, file_size - HEADER_LENGTH_BYTES):
        raise LayoutError(f"its header length field ({length:,} bytes) is impossible")
    try:
        header = json.loads(file.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"its header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise LayoutError("its header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise LayoutError(f"its {METADATA_KEY!r} is not a string-to-string object")
    entries = sorted((_entry(name, info) for name, info in header.items()), key=lambda e: e.begin)
    offset = 0
    for entry in entries:
        if entry.begin != offset:
            raise LayoutError(
                f"tensor {entry.name!r} starts at data offset {entry.begin}, expected {offset}"
            )
        offset = entry.end
    data_start = HEADER_LENGTH_BYTES + length
    if data_start + offset != file_size:
        raise LayoutError(
            f"its header announces {data_start + offset:,} bytes, the file has {file_size:,}"
            + (" (truncated)" if file_size < data_start + offset else "")
        )
    return FileLayout({e.name: e for e in entries}, metadata, data_start)


def _entry(name: str, info: Any) -> TensorEntry:
    try:
        dtype = numpy_dtype(info["dtype"])
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
    except (TypeError, KeyError, ValueError) as exc:
        raise LayoutError(f"tensor {name!r} has a malformed header entry: {exc}") from None
    if not all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end)):
        raise LayoutError(f"tensor {name!r}: shape and offsets must be non-negative integers")
    entry = TensorEntry(name, dtype, shape, begin)
    if entry.end != end:
        raise LayoutError(
            f"tensor {name!r}: offsets {begin}..{end} do not hold {entry.nbytes} bytes of "
            f"{info['dtype']} {list(shape)}"
        )
    return entry


# -- split exports ------------------------------------------------------------------------------
#: Appended to the export's name for the index of a split export (Hugging Face's convention).
INDEX_SUFFIX = ".index.json"
INDEX_FORMAT = "wordybird.split-safetensors"
INDEX_VERSION = 1


@dataclass(frozen=True)
class IndexEntry:
    """One file of a split export: its name (beside the index) and the steps it holds."""

    name: str
    first_step: int
    last_step: int
    count: int
    nbytes: int


@dataclass(frozen=True)
class SplitIndex:
    """The index of a split export: its files in step order, and the fields each holds."""

    files: list[IndexEntry]
    fields: list[str]


def index_path(out: Path) -> Path:
    """Where the index of a split export named ``out`` goes: ``OUT.safetensors.index.json``."""
    return out.with_name(out.name + INDEX_SUFFIX)


def part_paths(out: Path, count: int) -> list[Path]:
    """``OUT-00001-of-0000N.safetensors`` …: the files of a split export named ``out``."""
    return [
        out.with_name(f"{out.stem}-{i:05d}-of-{count:05d}{out.suffix}") for i in range(1, count + 1)
    ]


def encode_index(index: SplitIndex) -> bytes:
    """The index as the JSON document FORMAT.md specifies."""
    document = {
        "format": INDEX_FORMAT,
        "format_version": INDEX_VERSION,
        "fields": index.fields,
        "steps": sum(entry.count for entry in index.files),
        "files": [asdict(entry) for entry in index.files],
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def read_index(path: Path) -> SplitIndex:
    """Parse a split export's index; :class:`LayoutError` if it is not one this version reads."""
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"it is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        raise LayoutError(f'it has no "format": {INDEX_FORMAT!r}')
    if document.get("format_version") != INDEX_VERSION:
        raise LayoutError(
            f"it has format version {document.get('format_version')}; this wordybird reads "
            f"version {INDEX_VERSION}"
        )
    try:
        files = [IndexEntry(**entry) for entry in document["files"]]
        return SplitIndex(files, list(document["fields"]))
    except (KeyError, TypeError) as exc:
        raise LayoutError(f"it is malformed: {exc}") from None
