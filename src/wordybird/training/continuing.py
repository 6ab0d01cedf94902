"""Planning ``wordybird continue``: which settings the new run takes from the checkpoint's
run, where it starts, and with which optimizer state and learning-rate schedule.

A checkpoint is either a Trainer checkpoint (weights, ``optimizer.pt``, ``scheduler.pt``,
``trainer_state.json``, RNG state) or weights only, as ``save_pretrained`` writes them. The
notebook's ``from_pretrained`` loaded weights only and silently trained with a fresh
optimizer; ``--fresh-optimizer`` reproduces that, and is required to continue from weights
only, which carry no Adam state and no step (the new run counts from step 0, as the
notebook's did).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from transformers import GPT2LMHeadModel

from wordybird.errors import WordybirdError
from wordybird.training.checkpoints import (
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    TRAINER_STATE_FILE,
    checkpoint_folder,
    is_weights_only,
    load_checkpoint_model,
    model_config_of,
    torch_load,
    trainer_state,
)
from wordybird.training.config import RunPlan, Schedule, TrainConfig, read_run_file
from wordybird.training.schedules import (
    ConstantFactor,
    LinearDecay,
    LRFactor,
    schedule_from_state,
)

#: The settings a continued run takes from the checkpoint's run unless given.
INHERITED = ("corpus", "batch_size", "seed", "mode")

#: Where a setting came from: the checkpoint's run, the caller, or the default.
Source = Literal["run", "given", "default"]


def inherit_settings(
    checkpoint: Path, config: TrainConfig, given: Collection[str]
) -> tuple[TrainConfig, dict[str, Source]]:
    """``config`` with the :data:`INHERITED` settings not named in ``given`` taken from the
    checkpoint's run, and where each of them came from.

    A continued run goes on with its run's data: the Trainer's resume skips the batches that
    run has seen, which only means something for the same corpus, batch size and seed (the
    seed orders the batches); and its recording keeps the run's mode. The checkpoint's run is
    the run file in the folder holding the checkpoint, as ``train`` and ``continue`` write it
    (``runs/wb1/run.json`` for ``runs/wb1/checkpoint-100``). Without one (a plain Trainer
    checkpoint, weights saved elsewhere), ``config``'s values stand.
    """
    run = read_run_file(checkpoint_folder(checkpoint).resolve().parent)
    sources: dict[str, Source] = {}
    inherited: dict[str, Any] = {}
    for name in INHERITED:
        if name in given:
            sources[name] = "given"
        elif run is None:
            sources[name] = "default"
        else:
            sources[name] = "run"
            inherited[name] = getattr(run.config, name)
    return replace(config, **inherited), sources


def plan_continue(
    checkpoint: Path, config: TrainConfig, *, schedule: Schedule, fresh_optimizer: bool
) -> tuple[RunPlan, GPT2LMHeadModel]:
    """The run that goes on from ``checkpoint`` for ``config.steps`` more steps, and the
    checkpoint's model (whose shape the plan takes). Reads the checkpoint, writes nothing.

    ``schedule``: ``restart`` = a new linear decay from the base LR over the new steps;
    ``continue`` = the saved scheduler as it is; ``constant`` = hold the LR the checkpoint's
    last step used. The base LR is the saved scheduler's (``config``'s without one).
    """
    state = _training_state(checkpoint_folder(checkpoint), fresh_optimizer)
    start = int(state.get("global_step", 0))
    base_lr, factor = _schedule(checkpoint, state, schedule, config)
    model = load_checkpoint_model(checkpoint)
    plan = RunPlan(
        replace(config.with_absolute_corpus(), model=model_config_of(model)),
        start_step=start,
        base_lr=base_lr,
        schedule=vars(factor),
        continued_from=str(checkpoint),
        schedule_mode=schedule,
        fresh_optimizer=fresh_optimizer,
    )
    return plan, model


def _training_state(checkpoint: Path, fresh_optimizer: bool) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json`` ({} for weights only); refused when Adam's
    state is missing and not declined."""
    if is_weights_only(checkpoint):
        if not fresh_optimizer:
            raise WordybirdError(
                f"{checkpoint} holds model weights only (no {TRAINER_STATE_FILE} or "
                f"{OPTIMIZER_FILE}); pass --fresh-optimizer to start Adam from zero as the "
                "notebook did"
            )
        return {}
    state = trainer_state(checkpoint)
    if not fresh_optimizer and not (checkpoint / OPTIMIZER_FILE).is_file():
        raise WordybirdError(
            f"{checkpoint} holds no optimizer state ({OPTIMIZER_FILE}); pass --fresh-optimizer "
            "to start Adam from zero as the notebook did"
        )
    return state


def _schedule(
    checkpoint: Path, state: dict[str, Any], schedule: Schedule, config: TrainConfig
) -> tuple[float, LRFactor]:
    """The base LR and the LR factor of the continued run (see :func:`plan_continue`)."""
    start = int(state.get("global_step", 0))
    path = checkpoint / SCHEDULER_FILE
    saved = torch_load(path) if path.is_file() else None
    saved_factor = schedule_from_state(
        (saved or {}).get("lr_lambdas", [None])[0], int(state.get("max_steps", start))
    )
    base_lr = float(saved["base_lrs"][0]) if saved else config.learning_rate
    if schedule == "restart":
        return base_lr, LinearDecay(start, start + config.steps)
    if schedule == "continue":
        if saved is None:
            raise WordybirdError(f"{checkpoint} holds no scheduler state ({SCHEDULER_FILE})")
        if saved_factor(start) == 0.0:
            warnings.warn(
                f"the checkpoint's schedule has decayed to 0 by step {start}: with --schedule "
                "continue the learning rate stays 0 and only Adam's state moves the weights",
                stacklevel=3,
            )
        return base_lr, saved_factor
    if schedule == "constant":
        return base_lr, ConstantFactor(saved_factor(max(start - 1, 0)) if saved else 1.0)
    raise WordybirdError(f"unknown schedule {schedule!r}; choose restart, continue or constant")
