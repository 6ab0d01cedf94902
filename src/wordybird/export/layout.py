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
from dataclasses import dataclass
from typing import Any

import torch

#: Bytes of the little-endian header length that starts every safetensors file.
HEADER_LENGTH_BYTES = 8
#: The header key that holds string → string metadata.
METADATA_KEY = "__metadata__"
#: The notebook's 0-d scalar tensors, taken from the run metadata of the same names.
SCALAR_METADATA: dict[str, torch.dtype] = {
    "learning_rate": torch.float32,
    "weight_decay": torch.float32,
    "adam_beta1": torch.float32,
    "adam_beta2": torch.float32,
    "n_trained": torch.int64,
    "n_untrained": torch.int64,
    "starting_step": torch.int64,
}

#: safetensors dtype names, in the order save_file lays tensors out (its Dtype enum, largest
#: first: measured with safetensors 0.8 by saving one tensor of each dtype). Torch dtype
#: names are looked up by attribute because older torch releases lack the unsigned ones.
_DTYPE_ORDER: tuple[tuple[str, str], ...] = (
    ("uint64", "U64"),
    ("int64", "I64"),
    ("float64", "F64"),
    ("complex64", "C64"),
    ("float32", "F32"),
    ("uint32", "U32"),
    ("int32", "I32"),
    ("bfloat16", "BF16"),
    ("float16", "F16"),
    ("uint16", "U16"),
    ("int16", "I16"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("int8", "I8"),
    ("uint8", "U8"),
    ("bool", "BOOL"),
)
_DTYPE_NAMES: dict[torch.dtype, str] = {
    getattr(torch, attr): name for attr, name in _DTYPE_ORDER if hasattr(torch, attr)
}
_DTYPE_RANK = {name: rank for rank, name in enumerate(_DTYPE_NAMES.values())}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def safetensors_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype ("BF16", "F32", …)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"safetensors cannot hold {dtype}") from None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown safetensors dtype {name!r}") from None


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: its name, dtype, full shape, and where its bytes lie."""

    name: str
    dtype: torch.dtype
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
