"""Learning-rate schedules as functions of the global step, and the Trainer that uses them.

Callable objects rather than closures: ``LambdaLR`` saves a callable object's ``__dict__``
in its state_dict, so a checkpoint's ``scheduler.pt`` says which schedule it follows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer


class LinearDecay:
    """LR factor falling linearly from 1 at step ``start`` to 0 at ``end`` (the Trainer's
    default schedule when ``start`` is 0), and 0 after."""

    def __init__(self, start: int, end: int) -> None:
        self.kind = "linear"
        self.start = start
        self.end = end

    def __call__(self, step: int) -> float:
        return max(0.0, (self.end - step) / max(1, self.end - self.start))


class ConstantFactor:
    """A constant LR factor."""

    def __init__(self, factor: float) -> None:
        self.kind = "constant"
        self.factor = factor

    def __call__(self, step: int) -> float:
        return self.factor


LRFactor = LinearDecay | ConstantFactor


def schedule_from_state(lambda_state: dict[str, Any] | None, trainer_max_steps: int) -> LRFactor:
    """The schedule a saved ``scheduler.pt`` follows.

    wordybird's schedules name themselves; a plain Trainer checkpoint's (an empty dict) is the
    Trainer's default linear decay over its run's ``max_steps``.
    """
    state = lambda_state or {}
    if state.get("kind") == "linear":
        return LinearDecay(int(state["start"]), int(state["end"]))
    if state.get("kind") == "constant":
        return ConstantFactor(float(state["factor"]))
    return LinearDecay(0, trainer_max_steps)


class WordybirdTrainer(Trainer):
    """A ``Trainer`` whose LR schedule is a :data:`LRFactor` of the global step."""

    def __init__(self, *args: Any, lr_factor: LRFactor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lr_factor = lr_factor

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LambdaLR:
        if self.lr_scheduler is None:
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.lr_factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler
