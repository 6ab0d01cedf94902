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

Both run on whatever slice of coordinates they are given (a block of a step in the
analysis, a sample in the live monitor): the arithmetic is elementwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from wordybird.analysis.lattice import ulp_distance, update_ulps
from wordybird.recorder.predict import Prediction, predict

#: The rules that predict a parameter's value (the others predict optimizer state).
PARAMETER_RULES = ("adam_param", "sgd_param")


@dataclass(frozen=True)
class PredictedStep:
    """The rule's verdict per coordinate: ``moves`` (bool), the unrounded ``update``
    (float64) and its size in ``ulps`` at the previous value (float64)."""

    moves: np.ndarray
    update: np.ndarray
    ulps: np.ndarray


def predicted_step(
    prediction: Prediction, previous: np.ndarray, inputs: Mapping[str, np.ndarray], step: int
) -> PredictedStep:
    """The update ``prediction`` makes at recorded step ``step`` to ``previous`` (the
    parameter's values at the step before), from ``inputs`` by role (arrays shaped like
    ``previous``, or 0-d scalars)."""
    rounded = predict(prediction, previous, inputs, step, parallel=False)
    wide = previous.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as the predictor's own NaNs
        update = predict(prediction, wide, inputs, step, parallel=False) - wide
    moves = ulp_distance(rounded, previous) != 0
    return PredictedStep(moves, update, update_ulps(previous, update))
