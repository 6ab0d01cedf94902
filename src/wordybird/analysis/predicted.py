"""A parameter's optimizer update, replayed from a recording with the predictive mode's predictor.

At a recorded step that directly follows the previous optimizer step, the update rule of a
parameter's value (``adam_param``, ``sgd_param`` of :mod:`wordybird.recorder.predict`: the
one implementation, the one predictive stores are decoded with) gives its value from the
previous step and the same step's recorded inputs. Two things are asked of it:

- **which coordinates move**: the rule's own arithmetic, rounded to the parameter's dtype
  as the optimizer rounds, changes the value; this is exactly the rounding question;
- **by how much**: the same rule on the previous value widened to float64 (so nothing is
  rounded to the parameter's dtype) minus the previous value: the update before
  round-to-nearest, in ULPs at the previous value (below 1/2: thrown away).

Both run on whatever coordinates they are given (the analysis: every coordinate for the
moves, in blocks, and a fixed sample of them for the sizes; the live monitor: its sample):
the arithmetic is elementwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from wordybird.analysis.lattice import ulp_distance, update_ulps
from wordybird.recorder.predict import Prediction, predict

#: The rules that predict a parameter's value (the others predict optimizer state).
PARAMETER_RULES = ("adam_param", "sgd_param")
#: Coordinates of a parameter whose update sizes are measured (and that the live monitor
#: follows): every one of a parameter this size or smaller, else this many evenly spaced.
SAMPLE_SIZE = 1 << 16


def sample_indices(size: int, count: int = SAMPLE_SIZE) -> np.ndarray:
    """``min(size, count)`` evenly spaced flat indices into ``size`` coordinates (int64):
    a fixed sample, the same at every step, the same in the analysis and the monitor."""
    count = min(size, count)
    return np.arange(count, dtype=np.int64) * size // max(count, 1)


def predicted_moves(
    prediction: Prediction, previous: np.ndarray, inputs: Mapping[str, np.ndarray], step: int
) -> np.ndarray:
    """Which coordinates the rule moves at recorded step ``step`` (bool): its own
    arithmetic, rounded to ``previous``'s dtype, changes the value. ``previous``: the
    values at the step before; ``inputs``: by role, arrays shaped like ``previous`` or 0-d
    scalars."""
    rounded = predict(prediction, previous, inputs, step, parallel=False)
    return ulp_distance(rounded, previous) != 0


@dataclass(frozen=True)
class PredictedUpdate:
    """The rule's update before rounding (float64), and its size in ULPs at the previous
    value (float64; below 1/2, round-to-nearest throws it away)."""

    update: np.ndarray
    ulps: np.ndarray


def predicted_update(
    prediction: Prediction, previous: np.ndarray, inputs: Mapping[str, np.ndarray], step: int
) -> PredictedUpdate:
    """The update the rule makes at recorded step ``step``, computed on the previous values
    widened to float64, so that nothing is rounded to the parameter's dtype."""
    wide = previous.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as the predictor's own NaNs
        update = predict(prediction, wide, inputs, step, parallel=False) - wide
    return PredictedUpdate(update, update_ulps(previous, update))
