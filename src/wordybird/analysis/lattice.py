"""The floating-point lattice: ordered integers, ULP distances and the spacing between neighbours.

A binary float of ``w`` bits (bf16 and fp16: 16, fp32: 32, fp64: 64) is a sign bit over
``w - 1`` magnitude bits. Read as a sign-magnitude integer, consecutive magnitudes are
consecutive representable values, so mapping ``bits -> ±(bits & magnitude mask)`` puts
every value of the type on one integer line where neighbours differ by exactly 1. The
number of lattice steps ("ULPs") between two values is then a plain integer difference,
across zero and across exponent boundaries alike; ``+0`` and ``-0`` both map to 0 (they
compare equal, so moving between them is not a hop).

NaN never occurs in healthy weights, but nothing here fails on it: NaN bit patterns sit
beyond ``±inf`` on the line, so a value that turns into NaN counts as a (large) hop, and a
neighbour gap involving NaN is NaN, which no comparison accepts.

The arithmetic is numpy's, on any of these dtypes (bf16 as ``ml_dtypes.bfloat16``), so
the per-parameter analysis and the live monitor run it without torch. Given bf16 torch
tensors (the notebook's analysis), the same functions run on the tensors' memory and give
tensors back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from wordybird.dtypes import BF16, from_torch, to_torch

if TYPE_CHECKING:
    import torch

    #: numpy arrays, or (the notebook's analysis) bf16 torch tensors
    ArrayLike = np.ndarray | torch.Tensor

#: bytes of a float -> the signed integer of its bits, and the integer type of its
#: lattice positions (wide enough to negate any magnitude: int32 for 16-bit floats)
_BITS = {2: np.int16, 4: np.int32, 8: np.int64}
_ORDERED = {2: np.int32, 4: np.int64, 8: np.int64}


def is_lattice_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a binary float this module handles (bf16, fp16, fp32, fp64)."""
    dtype = np.dtype(dtype)
    return dtype == BF16 or (dtype.kind == "f" and dtype.itemsize in _BITS)


def wide_dtype(dtype: np.dtype) -> np.dtype:
    """The float type that holds every value of ``dtype`` and every gap between two
    neighbours exactly: float32 up to 32 bits, float64 for float64 (the predictor's own
    working precision)."""
    return np.dtype(np.float64 if np.dtype(dtype).itemsize == 8 else np.float32)


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if not is_lattice_dtype(x.dtype):
        raise TypeError(f"expected a bf16, fp16, fp32 or fp64 array, got {x.dtype}")
    return x


def ordered(x: np.ndarray) -> np.ndarray:
    """Each value's position on its type's lattice (``+0`` and ``-0`` are both 0): int32
    for 16-bit floats, int64 for wider ones."""
    x = _check(x)
    width = x.dtype.itemsize
    out = _ORDERED[width]
    bits = x.view(_BITS[width]).astype(out)  # sign-extended: negative iff the sign bit is set
    sign = bits >> (8 * np.dtype(out).itemsize - 1)  # -1 where negative, else 0
    magnitude = out((1 << (8 * width - 1)) - 1)
    # two's-complement negation of the magnitude where negative, without a branch
    return ((bits & magnitude) ^ sign) - sign


def from_ordered(positions: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The value of ``dtype`` at each lattice position (inverse of :func:`ordered`; 0 -> +0;
    positions beyond the last pattern are clamped to it)."""
    dtype = np.dtype(dtype)
    width = dtype.itemsize
    unsigned = np.dtype(f"u{width}")
    top = (1 << (8 * width - 1)) - 1
    positions = np.clip(np.asarray(positions).astype(_ORDERED[width]), -top, top)
    magnitude = np.abs(positions).astype(unsigned)
    bits = np.where(positions < 0, magnitude | unsigned.type(top + 1), magnitude)
    return bits.astype(unsigned).view(dtype)


def ulp_distance(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """How many lattice steps lie between ``a`` and ``b``, elementwise, exactly: uint32 for
    16-bit floats, uint64 for wider ones (every distance on the line fits). Given bf16
    torch tensors, an int32 tensor."""
    if not isinstance(a, np.ndarray):
        _check_bf16(a, b)
        return to_torch(ulp_distance(_numpy(a), _numpy(b)).astype(np.int32))
    oa, ob = ordered(a), ordered(b)
    if oa.dtype.itemsize > np.dtype(a.dtype).itemsize:  # wide enough for the difference
        return np.abs(oa - ob).view(oa.dtype.str.replace("i", "u"))
    unsigned = np.dtype(oa.dtype.str.replace("i", "u"))
    ua, ub = oa.view(unsigned), ob.view(unsigned)
    return np.where(oa >= ob, ua - ub, ub - ua)


def spacing_toward(x: ArrayLike, direction: ArrayLike) -> ArrayLike:
    """The gap (in :func:`wide_dtype`, exact) from each value to its neighbour in the sign
    of ``direction``; given a bf16 torch tensor, a float32 tensor.

    This is the spacing (one ULP) that an update moving ``x`` that way must cover at least
    half of to change the rounded value. It is direction-dependent at powers of two, where
    the gap toward zero is half the gap away from it; ``direction == 0`` counts as upward.
    Under round-to-nearest, ``x + delta`` rounds to a different value exactly when
    ``|delta| > spacing_toward(x, delta) / 2`` (a tie at exactly half may go either way).
    """
    if not isinstance(x, np.ndarray):
        _check_bf16(x)
        return to_torch(spacing_toward(_numpy(x), _numpy(direction)))
    x = _check(x)
    step = np.where(np.asarray(direction) < 0, -1, 1)
    neighbour = from_ordered(ordered(x) + step, x.dtype)
    wide = wide_dtype(x.dtype)
    with np.errstate(invalid="ignore"):  # inf - inf at the ends of the line: NaN, as said
        return np.abs(neighbour.astype(wide) - x.astype(wide))


def update_ulps(previous: np.ndarray, update: np.ndarray) -> np.ndarray:
    """The size of each coordinate's ``update`` in ULPs of its ``previous`` value (the
    spacing in the update's direction), in float64: round-to-nearest keeps the value where
    this is below 1/2."""
    gap = spacing_toward(previous, update).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(np.asarray(update, dtype=np.float64)) / gap


# -- bf16 torch tensors (the notebook's analysis) --------------------------------------------


def _numpy(x: torch.Tensor) -> np.ndarray:
    return from_torch(x.detach().cpu())


def _check_bf16(*tensors: torch.Tensor) -> None:
    import torch

    for x in tensors:
        if x.dtype != torch.bfloat16:
            raise TypeError(f"expected a bfloat16 tensor, got {x.dtype}")


def ordered_int(x: torch.Tensor) -> torch.Tensor:
    """Each bf16 value's position on the lattice (int32; ``+0`` and ``-0`` are both 0)."""
    _check_bf16(x)
    return to_torch(ordered(_numpy(x)))


def from_ordered_int(positions: torch.Tensor) -> torch.Tensor:
    """The bf16 value at each lattice position (inverse of :func:`ordered_int`; 0 -> +0)."""
    return to_torch(from_ordered(_numpy(positions), BF16))
