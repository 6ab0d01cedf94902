"""Element types without torch: numpy dtypes (ml_dtypes for bf16 and fp8) are what the read
path, the store and the exporter speak; torch tensors are made at the edge, when asked for.

That keeps ``wordybird export``, ``inspect`` and ``check`` free of torch (its RSS and its
start-up time: benchmarks/bench_export.py), and a base install without it, while
``rec[field][i]`` still hands a torch tensor to those who want one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

if TYPE_CHECKING:
    import torch

BF16: np.dtype = np.dtype(ml_dtypes.bfloat16)

#: safetensors dtype names with their numpy dtypes (ml_dtypes for bf16 and fp8), in the
#: order save_file lays tensors out (its Dtype enum, largest first: measured with
#: safetensors 0.8 by saving one tensor of each dtype).
SAFETENSORS_DTYPES: tuple[tuple[str, np.dtype], ...] = (
    ("U64", np.dtype(np.uint64)),
    ("I64", np.dtype(np.int64)),
    ("F64", np.dtype(np.float64)),
    ("C64", np.dtype(np.complex64)),
    ("F32", np.dtype(np.float32)),
    ("U32", np.dtype(np.uint32)),
    ("I32", np.dtype(np.int32)),
    ("BF16", BF16),
    ("F16", np.dtype(np.float16)),
    ("U16", np.dtype(np.uint16)),
    ("I16", np.dtype(np.int16)),
    ("F8_E5M2FNUZ", np.dtype(ml_dtypes.float8_e5m2fnuz)),
    ("F8_E4M3FNUZ", np.dtype(ml_dtypes.float8_e4m3fnuz)),
    ("F8_E4M3", np.dtype(ml_dtypes.float8_e4m3fn)),
    ("F8_E5M2", np.dtype(ml_dtypes.float8_e5m2)),
    ("I8", np.dtype(np.int8)),
    ("U8", np.dtype(np.uint8)),
    ("BOOL", np.dtype(np.bool_)),
)


def exportable(dtype: np.dtype) -> bool:
    """Whether an export (a safetensors file) can hold values of ``dtype``: a recording
    holds only those, so that every recording exports."""
    return any(np.dtype(dtype) == known for _, known in SAFETENSORS_DTYPES)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for a dtype name as recorded in a store header ("bfloat16", …)."""
    return BF16 if name == "bfloat16" else np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    """The portable name of a numpy dtype ("bfloat16", "float32", "int64", …)."""
    return "bfloat16" if dtype == BF16 else np.dtype(dtype).name


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a torch tensor sharing its memory; ml_dtypes.bfloat16 as bf16."""
    import torch

    if array.dtype == BF16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def from_torch(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's data as a numpy array sharing its memory; bf16 as ml_dtypes.bfloat16."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BF16)
    return tensor.numpy()


def numpy_dtype_of(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype holding a torch dtype's values bit for bit."""
    import torch

    if dtype == torch.bfloat16:
        return BF16
    return torch.empty(0, dtype=dtype).numpy().dtype


def torch_dtype_of(dtype: np.dtype) -> torch.dtype:
    """The torch dtype for a numpy dtype (ml_dtypes.bfloat16 → torch.bfloat16)."""
    import torch

    if dtype == BF16:
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
