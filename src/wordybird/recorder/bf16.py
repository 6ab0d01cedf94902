"""The Zarr v3 extension data type ``"bfloat16"`` for zarr-python.

zarr-python (through 3.4) ships no bfloat16 type, but the zarr-extensions registry defines
``"bfloat16"`` (1 sign, 8 exponent, 7 mantissa bits, little-endian through the ``bytes``
codec). Declaring that name, rather than storing raw ``uint16``, lets any Zarr v3 reader
that knows the extension (TensorStore does) read our arrays as bf16. Importing this module
registers the type; zarr 3.1 does not load data-type entry points, so every module that
opens a store imports it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from zarr.core.dtype import data_type_registry
from zarr.core.dtype.common import DataTypeValidationError
from zarr.core.dtype.npy.float import BaseFloat

from wordybird.dtypes import BF16 as BF16_NUMPY


@dataclass(frozen=True, kw_only=True)
class BFloat16(BaseFloat):  # type: ignore[type-arg]
    """bfloat16 elements, numpy-typed by ``ml_dtypes.bfloat16``, 2 bytes each."""

    dtype_cls = type(BF16_NUMPY)
    _zarr_v3_name: ClassVar[Literal["bfloat16"]] = "bfloat16"
    endianness: Literal["little", "big"] | None = "little"

    @classmethod
    def from_native_dtype(cls, dtype: np.dtype) -> BFloat16:  # type: ignore[override]
        if np.dtype(dtype) != BF16_NUMPY:
            raise DataTypeValidationError(f"Invalid data type: {dtype}. Expected bfloat16.")
        return cls()

    def to_native_dtype(self) -> np.dtype:  # type: ignore[override]
        # ml_dtypes' bfloat16 is a legacy user dtype with no byte order of its own; bytes
        # reach disk little-endian through the ``bytes`` codec.
        return BF16_NUMPY

    @classmethod
    def _check_json_v2(cls, data: object) -> bool:  # type: ignore[override]
        return False  # bfloat16 exists only as a Zarr v3 extension

    @property
    def item_size(self) -> int:
        return 2

    def from_json_scalar(self, data: object, *, zarr_format: int) -> np.generic:  # type: ignore[override]
        # A hex string names the raw bits. The base class reads 4 hex digits as float16
        # bits, which would turn a bf16 fill value into a different number.
        if isinstance(data, str) and data.startswith("0x"):
            bits = np.array([int(data, 16)], dtype="<u2")
            return bits.view(BF16_NUMPY)[0]
        return super().from_json_scalar(data, zarr_format=zarr_format)  # type: ignore[arg-type]


if BFloat16._zarr_v3_name not in data_type_registry.contents:
    data_type_registry.register(BFloat16._zarr_v3_name, BFloat16)
