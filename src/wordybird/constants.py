"""Facts of the recording format that readers, writers and exporters share, in one place."""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

#: The step numbers, stored beside the fields (an array of the store, a tensor of an export).
STEPS_FIELD = "recorded_steps"

#: Recording modes (FORMAT.md, "Codecs").
Mode = Literal["default", "compact", "predictive"]
MODES: tuple[Mode, ...] = get_args(Mode)

#: Fields whose one step is at most this many bytes share chunks (and read blocks) across
#: consecutive steps: a chunk per step would mean thousands of tiny files.
SMALL_STEP_BYTES = 16 << 10
#: Steps per chunk (and per read block) of such small fields.
SMALL_FIELD_STEPS_PER_CHUNK = 1024


def step_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of one step of a field: its per-step shape times its item size."""
    return math.prod(shape) * np.dtype(dtype).itemsize
