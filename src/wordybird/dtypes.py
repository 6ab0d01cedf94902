"""Element types without torch: numpy dtypes (ml_dtypes for bf16 and fp8) are what the read
path, the store and the exporter speak; torch tensors are made at the edge, when asked for.

That keeps ``wordybird export``, ``inspect`` and ``check`` free of torch (~220 MB of RSS and
~2 s of start-up), while ``rec[field][i]`` still hands a torch tensor to those who want one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

if TYPE_CHECKING:
    import torch

BF16: np.dtype = np.dtype(ml_dtypes.bfloat16)


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
