"""Whether a parameter froze, from which step, why, and what would have kept it moving.

The one verdict shared by ``wordybird analyze`` (every coordinate of every recorded step)
and the live :class:`~wordybird.capture.monitor.FreezeMonitor` (a sample of coordinates,
during training): both describe each recorded step as a :class:`StepEvidence`, and
:func:`verdict` decides. Plain Python and numpy, no torch.

- **Frozen from** (:func:`freeze_step`): the first step from which the fraction of
  coordinates that changed stays below the threshold to the end.
- **Cause**, over that frozen span, in this order: ``"zero_lr"`` (the learning rate is 0 at
  every step of it), ``"zero_gradient"`` (the recorded gradient is zero everywhere, at every
  step), ``"rounding"`` (the optimizer's own update rule, replayed from the recording,
  moves fewer than the threshold's fraction of coordinates at every predicted step, and
  agrees with what happened on at least :data:`AGREEMENT` of them: the updates fall below
  half the spacing at each value, where round-to-nearest throws them away), else
  ``"unexplained"``, with the reason (no prediction for this optimizer, or a prediction
  that says the coordinates should have moved).
- **Remedy**: for rounding, fp32 master weights (or Kahan summation / stochastic rounding),
  and the learning rate at which half the coordinates would still have moved. Adam's and
  SGD's updates (weight decay's part included) are proportional to the learning rate, so
  that LR is ``lr / (2 · median ULPs)``: it scales the median update to half a ULP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wordybird.errors import WordybirdError

#: Moving fraction below which a step counts as frozen.
DEFAULT_THRESHOLD = 1e-3
#: Consecutive recorded steps below the threshold before the live monitor warns.
DEFAULT_PATIENCE = 5
#: Agreement of predicted with observed moves (per coordinate) that a rounding freeze needs.
AGREEMENT = 0.99
#: The remedy of a rounding freeze that holds for any optimizer.
MASTER_WEIGHTS = "fp32 master weights (or Kahan summation / stochastic rounding)"

Cause = Literal["rounding", "zero_gradient", "zero_lr", "unexplained"]


def no_rule(optimizer: str) -> str:
    """Why a parameter of ``optimizer`` (its class name) has no update rule to replay."""
    return (
        f"wordybird knows no update rule of {optimizer} with these settings (it predicts Adam "
        "and AdamW without amsgrad or coupled weight decay, and SGD without weight decay), so "
        "a freeze cannot be told to be rounding"
    )


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is a fraction in (0, 1]; else one clear error."""
    if not 0 < threshold <= 1:
        raise WordybirdError(f"the threshold is a hop fraction in (0, 1], got {threshold}")
    return threshold


def freeze_step(steps: np.ndarray, fractions: list[float | None], threshold: float) -> int | None:
    """The first step from which every later hop fraction stays below ``threshold``.

    ``None`` means not frozen: the last step still hops (or is unknown). Unknown fractions
    (``None``, e.g. the first recorded step, which has no predecessor) end the frozen run.
    """
    frozen_from: int | None = None
    for step, fraction in zip(steps[::-1], fractions[::-1], strict=True):
        if fraction is None or not fraction < threshold:
            break
        frozen_from = int(step)
    return frozen_from


@dataclass(frozen=True)
class StepEvidence:
    """What one recorded step says about a parameter's moves (None: unknown there).

    ``moved``: the fraction of coordinates whose value changed since the previous recorded
    step; ``gradient_zero``: the recorded gradient is zero everywhere; ``predicted``: the
    fraction the update rule moves, from the previous step; ``agreement``: the fraction of
    coordinates on which predicted and observed moves agree; ``update_ulps_median``: the
    median size of the predicted update, in ULPs at the previous value.
    """

    step: int
    moved: float | None
    learning_rate: float | None = None
    gradient_zero: bool | None = None
    predicted: float | None = None
    agreement: float | None = None
    update_ulps_median: float | None = None


@dataclass(frozen=True)
class Verdict:
    """A parameter's verdict: frozen from which step (None: not frozen), why, and what
    would have kept it moving. ``reason`` states the evidence in numbers."""

    frozen_from_step: int | None
    cause: Cause | None
    reason: str
    remedy: str | None = None
    lr_half: float | None = None


def percent(value: float | None) -> str:
    """A fraction as a short percentage ("n/a" when unknown)."""
    return "n/a" if value is None else f"{100 * value:.3g}%"


def lr_half(learning_rate: float | None, update_ulps_median: float | None) -> float | None:
    """The learning rate at which the median coordinate's update would be half a ULP (so
    half the coordinates would move), for updates proportional to the learning rate."""
    if not learning_rate or not update_ulps_median or not math.isfinite(update_ulps_median):
        return None
    return learning_rate / (2 * update_ulps_median)


def verdict(
    evidence: Sequence[StepEvidence], threshold: float, no_prediction: str | None = None
) -> Verdict:
    """The verdict on a parameter from its recorded steps' evidence, in step order.

    ``no_prediction``: why the update rule is unknown (another optimizer, no prediction
    recorded), which is the reason a freeze then stays unexplained.
    """
    steps = np.array([e.step for e in evidence], dtype=np.int64)
    frozen_from = freeze_step(steps, [e.moved for e in evidence], threshold)
    if frozen_from is None:
        last = evidence[-1] if evidence else None
        moving = "" if last is None or last.moved is None else f" ({percent(last.moved)})"
        return Verdict(None, None, f"still moving at its last recorded step{moving}")
    span = [e for e in evidence if e.step >= frozen_from]
    if all(e.learning_rate == 0 for e in span):
        return Verdict(
            frozen_from,
            "zero_lr",
            f"the learning rate is 0 from step {frozen_from}",
            f"a learning rate above 0 (the schedule reaches 0 by step {frozen_from})",
        )
    if all(e.gradient_zero for e in span):
        return Verdict(
            frozen_from,
            "zero_gradient",
            f"its recorded gradient is zero everywhere from step {frozen_from}",
            "a gradient: from then on the loss does not depend on it (unused, detached or "
            "masked out)",
        )
    predicted = [e for e in span if e.predicted is not None]
    if not predicted:
        return Verdict(
            frozen_from,
            "unexplained",
            no_prediction
            or f"no step from {frozen_from} on could be predicted (none follows the previous "
            "optimizer step), so rounding cannot be told from other causes",
        )
    moving = max(predicted, key=lambda e: e.predicted or 0.0)
    disagreeing = min(predicted, key=lambda e: e.agreement or 0.0)
    if (moving.predicted or 0.0) >= threshold:
        return Verdict(
            frozen_from,
            "unexplained",
            f"the update rule moves {percent(moving.predicted)} of its coordinates at step "
            f"{moving.step}, yet {percent(moving.moved)} moved: something other than "
            "rounding held them",
        )
    if (disagreeing.agreement or 0.0) < AGREEMENT:
        return Verdict(
            frozen_from,
            "unexplained",
            f"predicted and observed moves agree on only {percent(disagreeing.agreement)} of "
            f"its coordinates at step {disagreeing.step} (rounding needs "
            f"{percent(AGREEMENT)})",
        )
    first = predicted[0]
    half = lr_half(first.learning_rate, first.update_ulps_median)
    remedy = f"{MASTER_WEIGHTS} would have kept it moving"
    if half is not None:
        remedy += (
            f"; so would a learning rate of at least {half:.3g} at step {first.step} (it was "
            f"{first.learning_rate:.3g}), at which half of its coordinates still move"
        )
    median = (
        ""
        if first.update_ulps_median is None
        else (f", the median update {first.update_ulps_median:.3g} ULP at step {first.step}")
    )
    return Verdict(
        frozen_from,
        "rounding",
        f"its updates fall below half a ULP: from step {frozen_from} the update rule moves at "
        f"most {percent(moving.predicted)} of its coordinates{median}, and agrees with what "
        f"happened on at least {percent(disagreeing.agreement)} of them",
        remedy,
        half,
    )
