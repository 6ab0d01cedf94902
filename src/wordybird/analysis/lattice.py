"""The bf16 lattice: ordered integers, ULP distances and the spacing between neighbours.

A bf16 value is a sign bit over 15 magnitude bits (8 exponent, 7 mantissa). Read as a
sign-magnitude integer, consecutive magnitudes are consecutive representable values, so
mapping ``bits -> ±(bits & 0x7FFF)`` puts every bf16 value on one integer line where
neighbours differ by exactly 1. The number of lattice steps ("ULPs") between two values is
then a plain integer difference, across zero and across exponent boundaries alike; ``+0``
and ``-0`` both map to 0 (they compare equal, so moving between them is not a hop).

NaN never occurs in embeddings, but nothing here fails on it: NaN bit patterns sit beyond
``±inf`` on the line, so a value that turns into NaN counts as a (large) hop, and a
neighbour gap involving NaN is NaN, which no comparison accepts.
"""

from __future__ import annotations

import torch

_MAGNITUDE = 0x7FFF
_SIGN = 0x8000
#: The largest ordered integer: the all-ones magnitude (a NaN pattern).
_ORDERED_MAX = _MAGNITUDE


def _check_bf16(x: torch.Tensor) -> None:
    if x.dtype != torch.bfloat16:
        raise TypeError(f"expected a bfloat16 tensor, got {x.dtype}")


def ordered_int(x: torch.Tensor) -> torch.Tensor:
    """Each bf16 value's position on the lattice (int32; ``+0`` and ``-0`` are both 0)."""
    _check_bf16(x)
    bits = x.view(torch.int16).to(torch.int32)  # sign-extended: negative iff the sign bit is set
    sign = bits >> 15  # -1 where negative, else 0
    # two's-complement negation of the magnitude where negative, without a branch
    return ((bits & _MAGNITUDE) ^ sign) - sign


def from_ordered_int(ordered: torch.Tensor) -> torch.Tensor:
    """The bf16 value at each lattice position (inverse of :func:`ordered_int`; 0 -> +0)."""
    ordered = ordered.to(torch.int32).clamp(-_ORDERED_MAX, _ORDERED_MAX)
    magnitude = ordered.abs()
    # As int16, the pattern 0x8000 | m is m - 0x8000: build it without relying on wrap-around.
    bits = torch.where(ordered < 0, magnitude - _SIGN, magnitude)
    return bits.to(torch.int16).view(torch.bfloat16)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many bf16 lattice steps lie between ``a`` and ``b``, elementwise (int32, >= 0)."""
    return (ordered_int(b) - ordered_int(a)).abs()


def spacing_toward(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The gap (float32, exact) from each bf16 value to its neighbour in the sign of ``direction``.

    This is the bf16 spacing (one ULP) that an update moving ``x`` that way must cover at
    least half of to change the rounded value. It is direction-dependent at powers of two,
    where the gap toward zero is half the gap away from it; ``direction == 0`` counts as
    upward. Under round-to-nearest, ``x + delta`` rounds to a different bf16 value exactly
    when ``|delta| > spacing_toward(x, delta) / 2`` (a tie at exactly half may go either way).
    """
    _check_bf16(x)
    step = torch.where(direction < 0, -1, 1).to(torch.int32)
    neighbour = from_ordered_int(ordered_int(x) + step)
    # adjacent bf16 values differ by a power of two >= 2^-133: exact in float32
    return (neighbour.float() - x.float()).abs()
