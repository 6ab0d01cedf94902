"""Per-step lattice-hop statistics of a recording, and the Adam update that explains them.

A coordinate *hops* at a recorded step when its bf16 value differs from the previous
recorded step's. For each step this module measures, separately for the tokens that occur
in the corpus ("trained") and those that never do ("untrained"): the fraction of embedding
coordinates that hopped, the hop sizes in ULPs, the per-token displacement norms, and the
untrained cloud's centroid and radius. It then predicts the hops from the recorded Adam
state: the step's update ``u = lr · m̂ / (√v̂ + ε)`` (plus ``lr · wd · w`` when weight decay
is on) changes a bf16 value under round-to-nearest exactly when it exceeds half the lattice
spacing at that value, so comparing the predicted with the observed hop fraction tests
whether a "freeze" is just the update shrinking below the bf16 lattice.

Memory is bounded by a few copies of one step: the recording is read one position at a
time, keeping only the previous and the first step's embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wordybird.analysis.freeze import DEFAULT_THRESHOLD, check_threshold, freeze_step
from wordybird.analysis.lattice import ordered_int, spacing_toward
from wordybird.analysis.masks import GROUPS, TokenMasks
from wordybird.analysis.parameters import recording_label
from wordybird.analysis.run_inputs import (
    AdamSettings,
    embeddings_shape,
    learning_rates,
    optimizer_steps,
)
from wordybird.errors import WordybirdError
from wordybird.recording import Recording

#: Per-group statistics, in column order; each becomes ``<group>_<name>`` in a record,
#: except the predicted fraction, which is ``predicted_<group>_hop_fraction``.
_GROUP_STATS: tuple[str, ...] = (
    "hop_fraction",
    "predicted_hop_fraction",
    "prediction_agreement",
    "hop_ulps_mean",
    "hop_ulps_max",
    "update_mean",
    "update_ratio_median",
    "displacement_prev_max",
    "displacement_prev_mean",
    "displacement_prev_median",
    "displacement_first_max",
    "displacement_first_mean",
    "displacement_first_median",
)


def column(group: str, stat: str) -> str:
    """The record key of a per-group statistic."""
    return (
        f"predicted_{group}_hop_fraction"
        if stat == "predicted_hop_fraction"
        else (f"{group}_{stat}")
    )


#: Every record's keys, in the order the CSV lists them.
COLUMNS: tuple[str, ...] = (
    "step",
    "optimizer_step",
    "learning_rate",
    *(column(g, s) for g in GROUPS for s in _GROUP_STATS),
    "untrained_centroid_norm",
    "untrained_radius",
)


@dataclass
class Analysis:
    """One recording's per-step records and its summary."""

    label: str
    path: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    def series(self, key: str) -> np.ndarray:
        """A record column as float64, NaN where a value is missing (for plotting)."""
        return np.array(
            [math.nan if r.get(key) is None else r[key] for r in self.records], dtype=np.float64
        )


def analyze(
    recording: Recording,
    masks: TokenMasks,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    label: str | None = None,
    progress: bool = False,
) -> Analysis:
    """Measure hops, displacements and the predicted hops at every recorded step."""
    vocab_size, dim = embeddings_shape(recording)
    check_threshold(threshold)
    steps = recording.steps
    if len(steps) < 2:
        raise WordybirdError(
            f"{recording.path} has {len(steps)} recorded step(s); hops need at least two"
        )
    lrs, lr_source = learning_rates(recording)
    t_steps, t_rule = optimizer_steps(recording)
    adam = AdamSettings.from_metadata(recording.metadata)
    missing_state = [f for f in ("momentum", "variance") if f not in recording.fields]
    can_predict = lrs is not None and not missing_state
    predicts = 0

    # The rows of interest, grouped (untrained, then trained), so that every elementwise
    # pass runs once per step over one matrix and each group is a slice of it, not a copy.
    order = torch.cat([masks.untrained, masks.trained])
    n_untrained = int(masks.untrained.numel())
    spans = {"untrained": slice(0, n_untrained), "trained": slice(n_untrained, len(order))}

    def rows(name: str, position: int) -> torch.Tensor:
        return recording.read(name, position)[order]

    records: list[dict[str, Any]] = []
    first: _State | None = None
    prev: _State | None = None
    positions: Iterator[int] = iter(range(len(steps)))
    if progress:
        positions = tqdm(
            positions, total=len(steps), desc="analyze", unit="step", leave=False, disable=None
        )
    for position in positions:
        current = _State.of(rows("embeddings", position))
        record: dict[str, Any] = dict.fromkeys(COLUMNS)
        record["step"] = int(steps[position])
        record["optimizer_step"] = int(t_steps[position])
        record["learning_rate"] = None if lrs is None else float(lrs[position])
        if first is None or prev is None:
            first = current
        else:
            ulps = (current.ordered - prev.ordered).abs()
            prediction = None
            if can_predict and steps[position] - steps[position - 1] == 1 and t_steps[position] > 0:
                change = _update(
                    rows("momentum", position),
                    rows("variance", position),
                    prev.wide,
                    float(lrs[position]),
                    adam,
                    int(t_steps[position]),
                )
                prediction = (change.abs(), spacing_toward(prev.values, change) / 2)
                predicts += 1
            for group, span in spans.items():
                record.update(
                    _group_stats(
                        group,
                        ulps[span],
                        current.wide[span],
                        prev.wide[span],
                        first.wide[span],
                        None if prediction is None else (prediction[0][span], prediction[1][span]),
                    )
                )
        record.update(_cloud(current.wide[spans["untrained"]]))
        records.append(record)
        prev = current

    observed = [r["untrained_hop_fraction"] for r in records]
    predicted = [r["predicted_untrained_hop_fraction"] for r in records]
    summary: dict[str, Any] = {
        "recording": str(recording.path),
        "format": recording.format,
        "label": label or recording_label(recording.path),
        "masks": str(masks.path),
        "vocab_size": vocab_size,
        "embedding_dim": dim,
        "n_untrained": int(masks.untrained.numel()),
        "n_trained": int(masks.trained.numel()),
        "recorded_steps": len(steps),
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "threshold": threshold,
        "freeze_step": freeze_step(steps, observed, threshold),
        "predicted_freeze_step": freeze_step(steps, predicted, threshold) if predicts else None,
        "learning_rate_source": lr_source,
        "optimizer_step_rule": t_rule,
        "adam": {
            "beta1": adam.beta1,
            "beta2": adam.beta2,
            "epsilon": adam.epsilon,
            "weight_decay": adam.weight_decay,
        },
        "prediction": _prediction_note(lrs is not None, missing_state, predicts, len(steps) - 1),
        "initial_untrained_centroid_norm": records[0]["untrained_centroid_norm"],
        "initial_untrained_radius": records[0]["untrained_radius"],
    }
    return Analysis(summary["label"], Path(recording.path), records, summary)


@dataclass(frozen=True)
class _State:
    """One step's embedding rows, in the forms the statistics reuse across two steps."""

    values: torch.Tensor  # bf16, as recorded
    ordered: torch.Tensor  # int32 lattice positions
    wide: torch.Tensor  # float32 (exact: every bf16 value is a float32 value)

    @classmethod
    def of(cls, values: torch.Tensor) -> _State:
        return cls(values, ordered_int(values), values.float())


def _update(
    m: torch.Tensor, v: torch.Tensor, previous: torch.Tensor, lr: float, adam: AdamSettings, t: int
) -> torch.Tensor:
    """The change an AdamW step makes to the previous weights, in float32.

    ``w <- w - lr·wd·w - lr·m̂/(√v̂+ε)`` with this step's after-step moments ``m``, ``v``
    (bf16, widened exactly). float32 is ample: only updates within ~1e-7 relative of half
    a spacing could be classified differently than in exact arithmetic.
    """
    m_hat = m.float() / (1.0 - adam.beta1**t)
    v_hat = v.float() / (1.0 - adam.beta2**t)
    change = m_hat.div_(v_hat.sqrt_().add_(adam.epsilon)).mul_(-lr)
    if adam.weight_decay > 0:
        change -= lr * adam.weight_decay * previous
    return change


def _group_stats(
    group: str,
    ulps: torch.Tensor,
    current: torch.Tensor,
    prev: torch.Tensor,
    first: torch.Tensor,
    prediction: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, float | None]:
    """One token group's statistics for one step.

    ``ulps``: each coordinate's hop in ULPs since the previous step; ``current``/``prev``/
    ``first``: float32 rows; ``prediction``: the update's magnitude and half the bf16
    spacing in its direction, per coordinate, when the step could be predicted.
    """
    n = ulps.numel()
    if not n:
        return {}
    hopped = ulps != 0
    n_hopped = int(hopped.count_nonzero())
    stats: dict[str, float | None] = {
        "hop_fraction": n_hopped / n,
        # non-hopping coordinates add 0 ULPs, so the sum over all is the sum over the hops
        "hop_ulps_mean": int(ulps.sum(dtype=torch.int64)) / n_hopped if n_hopped else None,
        "hop_ulps_max": int(ulps.max()) if n_hopped else None,
    }
    stats.update(_norm_stats("displacement_prev", current - prev))
    stats.update(_norm_stats("displacement_first", current - first))
    if prediction is not None:
        magnitude, half = prediction
        predicted = magnitude > half
        stats["predicted_hop_fraction"] = int(predicted.count_nonzero()) / n
        stats["prediction_agreement"] = int((predicted == hopped).count_nonzero()) / n
        stats["update_mean"] = float(magnitude.sum(dtype=torch.float64)) / n
        stats["update_ratio_median"] = float((magnitude / half).median())
    return {column(group, k): _finite(v) for k, v in stats.items()}


def _norm_stats(name: str, difference: torch.Tensor) -> dict[str, float | None]:
    """Max/mean/median per-token displacement norm, as the notebook's verification cell."""
    if not len(difference):
        return {}
    norms = torch.norm(difference, dim=1)
    return {
        f"{name}_max": float(norms.max()),
        f"{name}_mean": float(norms.mean()),
        f"{name}_median": float(norms.median()),
    }


def _cloud(untrained: torch.Tensor) -> dict[str, float | None]:
    """The untrained tokens' centroid norm and bounding radius (the notebook's initial state)."""
    if not len(untrained):
        return {}
    w = untrained.float()
    centroid = w.mean(0)
    radius = torch.norm(w - centroid, dim=1).max()
    return {
        "untrained_centroid_norm": _finite(float(torch.norm(centroid))),
        "untrained_radius": _finite(float(radius)),
    }


def _finite(value: float | None) -> float | None:
    """Non-finite numbers (NaN weights) become missing values, which JSON and CSV can hold."""
    return value if value is None or math.isfinite(value) else None


def _prediction_note(have_lr: bool, missing_state: list[str], predicted: int, steps: int) -> str:
    if missing_state:
        return f"no prediction: the recording has no {' or '.join(missing_state)} field"
    if not have_lr:
        return "no prediction: the learning rate is unknown"
    if predicted < steps:
        return (
            f"predicted for {predicted} of {steps} steps (only steps that directly follow "
            "the previous recorded step, after the optimizer's first step, can be predicted)"
        )
    return f"predicted for all {steps} steps"
