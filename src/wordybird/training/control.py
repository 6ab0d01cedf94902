"""The run's progress bar (with the loss), its timing, and Ctrl-C: the first one stops
after the current step with a checkpoint, a second one interrupts at once."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback


class RunControl(TrainerCallback):
    """Progress bar with loss; Ctrl-C stops after the current step with a checkpoint."""

    def __init__(self) -> None:
        self.interrupted = False
        self.bar: Any = None
        self.started = math.nan
        self.ended = math.nan
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.last_loss = math.nan

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.first_step = state.global_step
        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True
        )
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if logs and "loss" in logs and self.bar is not None:
            self.last_loss = float(logs["loss"])
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}")

    def on_step_end(self, args, state, control, **kwargs: Any) -> None:
        self.last_step = state.global_step
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        if self.interrupted:
            control.should_training_stop = True
            control.should_save = True

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        self.ended = time.perf_counter()
        if self.bar is not None:
            self.bar.close()

    @contextmanager
    def catching_interrupts(self) -> Iterator[None]:
        """The first Ctrl-C asks for a clean stop; a second one interrupts at once."""

        def stop(signum: int, frame: Any) -> None:
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)
            if self.bar is not None:
                self.bar.write("interrupt: stopping after this step and writing a checkpoint")

        try:
            previous = signal.signal(signal.SIGINT, stop)
        except ValueError:  # not the main thread: no signal handling there
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @property
    def seconds_per_step(self) -> float:
        steps = (self.last_step or 0) - (self.first_step or 0)
        return (self.ended - self.started) / steps if steps > 0 else math.nan
