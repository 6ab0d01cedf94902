"""Planning ``wordybird continue``: where the new run starts, and with which optimizer
state and learning-rate schedule.

The notebook's ``from_pretrained`` loaded weights only and silently trained with a fresh
optimizer; ``--fresh-optimizer`` reproduces that.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import GPT2LMHeadModel

from wordybird.errors import WordybirdError
from wordybird.training.checkpoints import (
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    checkpoint_folder,
    load_checkpoint_model,
    model_config_of,
    torch_load,
    trainer_state,
)
from wordybird.training.config import RunPlan, Schedule, TrainConfig
from wordybird.training.schedules import (
    ConstantFactor,
    LinearDecay,
    LRFactor,
    schedule_from_state,
)


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
        replace(config, model=model_config_of(model)),
        start_step=start,
        base_lr=base_lr,
        schedule=vars(factor),
        continued_from=str(checkpoint),
        schedule_mode=schedule,
        fresh_optimizer=fresh_optimizer,
    )
    return plan, model


def _training_state(checkpoint: Path, fresh_optimizer: bool) -> dict[str, Any]:
    """The checkpoint's ``trainer_state.json``; refused when Adam's state is missing and not
    declined."""
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
