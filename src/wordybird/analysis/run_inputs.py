"""What the analysis needs from a recording besides the embeddings: the optimizer's
constants, the learning rate of each step, the optimizer step count, and a check that the
embeddings are a bf16 [vocab, dim] matrix. All read from the recording and its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wordybird.errors import WordybirdError
from wordybird.recording import Recording

#: torch.optim.Adam(W)'s defaults, which the Trainer passes through unless told otherwise.
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.999
DEFAULT_EPSILON = 1e-8


@dataclass(frozen=True)
class AdamSettings:
    """The optimizer's constants, from the run's metadata (torch's defaults when absent)."""

    beta1: float = DEFAULT_BETA1
    beta2: float = DEFAULT_BETA2
    epsilon: float = DEFAULT_EPSILON
    weight_decay: float = 0.0

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> AdamSettings:
        """Top-level entries (the notebook's scalars) first, then ``hyperparameters``."""
        nested = metadata.get("hyperparameters")
        nested = nested if isinstance(nested, dict) else {}

        def value(key: str, default: float) -> float:
            return float(metadata.get(key, nested.get(key, default)))

        return cls(
            beta1=value("adam_beta1", DEFAULT_BETA1),
            beta2=value("adam_beta2", DEFAULT_BETA2),
            epsilon=value("adam_epsilon", DEFAULT_EPSILON),
            weight_decay=value("weight_decay", 0.0),
        )


def learning_rates(recording: Recording) -> tuple[np.ndarray | None, str]:
    """Each position's learning rate (the one its optimizer step used) and where it came from.

    The recorded ``learning_rates`` field is used when present. Otherwise the metadata's
    ``learning_rate`` is decayed as the Trainer's default linear schedule (no warmup unless
    ``warmup_steps`` says so) does: the k-th optimizer step of the run (k = step -
    starting_step) runs at ``lr · (N - (k-1)) / N``, reaching 0 at ``N = max_steps``; without
    ``max_steps`` the recording is taken to cover the whole run.
    """
    steps = recording.steps
    if "learning_rates" in recording.fields:
        values = recording.read("learning_rates", slice(0, len(steps)))
        return values.to(torch.float64).reshape(len(steps)).numpy(), "recorded field learning_rates"
    metadata = recording.metadata
    if "learning_rate" not in metadata:
        return None, "unknown (no learning_rates field and no learning_rate in the metadata)"
    base = float(metadata["learning_rate"])
    start = int(metadata.get("starting_step", steps[0] if len(steps) else 0))
    horizon = metadata.get("max_steps")
    total = int(horizon) if horizon is not None else int(steps[-1]) - start
    warmup = int(metadata.get("warmup_steps", 0))
    current = np.maximum(steps - start - 1, 0).astype(np.float64)  # the scheduler's step count
    if warmup > 0:
        factor = np.where(
            current < warmup,
            current / warmup,
            np.maximum(0.0, (total - current) / max(1, total - warmup)),
        )
    else:
        factor = np.maximum(0.0, (total - current) / max(1, total))
    where = f"max_steps={total}" if horizon is not None else f"the last recorded step ({total})"
    return base * factor, (
        f"metadata learning_rate={base:g} with the Trainer's linear decay to 0 at {where}"
        + (f" after {warmup} warmup steps" if warmup else "")
    )


def optimizer_steps(recording: Recording) -> tuple[np.ndarray, str]:
    """Adam's step count t after each recorded step, for the bias corrections.

    The recorded momentum/variance are the state *after* the step, so t is the number of
    optimizer steps the state has taken. In order of precedence:

    - metadata ``optimizer_step_offset`` (the steps a restored state had already taken):
      ``t = step - starting_step + offset``;
    - a ``wordybird continue`` run that kept the checkpoint's Adam state (metadata
      ``run.continued_from`` set, ``run.fresh_optimizer`` false): its step numbers continue
      the original run's, whose optimizer started at step 0, so ``t = step``;
    - otherwise the optimizer started fresh at ``starting_step`` (a fresh run, or the
      notebook's continuation, whose ``from_pretrained`` restored weights only):
      ``t = step - starting_step``.
    """
    metadata = recording.metadata
    steps = recording.steps
    start = int(metadata.get("starting_step", steps[0] if len(steps) else 0))
    run = metadata.get("run") if isinstance(metadata.get("run"), dict) else {}
    if "optimizer_step_offset" in metadata:
        offset = int(metadata["optimizer_step_offset"])
        rule = f"t = step - starting_step ({start}) + optimizer_step_offset ({offset})"
        return steps - start + offset, rule
    if run.get("continued_from") and run.get("fresh_optimizer") is False:
        return steps.copy(), (
            f"t = step (Adam's state was restored from {run['continued_from']}, so its count "
            "continues the original run's)"
        )
    return steps - start, f"t = step - starting_step ({start})"


def embeddings_shape(recording: Recording) -> tuple[int, int]:
    """The [vocab, dim] of a recording's bf16 embeddings; refuses what cannot be analysed."""
    if "embeddings" not in recording.fields:
        raise WordybirdError(
            f"{recording.path} has no 'embeddings' field (it has {', '.join(recording.fields)}); "
            "the lattice analysis needs the per-step embedding matrix"
        )
    shape = recording.step_shape("embeddings")
    if len(shape) != 2:
        raise WordybirdError(
            f"{recording.path}: 'embeddings' has per-step shape {shape}, expected [vocab, dim]"
        )
    if recording.dtype("embeddings") != torch.bfloat16:
        raise WordybirdError(
            f"{recording.path}: 'embeddings' are {recording.dtype('embeddings')}, not bfloat16; "
            "the lattice analysis is about the bf16 lattice"
        )
    for name in ("momentum", "variance"):
        if name in recording.fields and recording.step_shape(name) != shape:
            raise WordybirdError(
                f"{recording.path}: {name!r} has per-step shape {recording.step_shape(name)}, "
                f"but 'embeddings' has {shape}"
            )
    return shape[0], shape[1]
