"""A run's progress bar, its Ctrl-C handling and its timing.

The progress bar is the Trainer's own (``ProgressCallback``: it starts, advances and closes
the bar, on the main process only), with the loss shown in the bar rather than printed;
in a notebook, the Trainer's notebook table stays as it is. :class:`RunControl` does what
the Trainer does not: the first Ctrl-C stops after the current step with a checkpoint, a
second one interrupts at once, and it times the steps for the summary. (The Trainer lets
Ctrl-C raise ``KeyboardInterrupt`` mid-step, without a checkpoint; its just-in-time
checkpoint, ``enable_jit_checkpoint`` in transformers 5, answers SIGTERM only, after a
grace period, and may save before the step's optimizer update.)
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm
from transformers import ProgressCallback, Trainer, TrainerCallback


class LossProgressBar(ProgressCallback):
    """The Trainer's progress bar, with two changes.

    The loss goes into the bar: the Trainer's callback prints each log (loss, gradient norm,
    learning rate, epoch) as a line on stdout, and a run logs every step (the summary's
    first and last losses come from the log), so a 1000-step run printed 1000 lines above
    the summary, which is the command's output. And a resumed or continued run's bar
    starts at its checkpoint's step: the Trainer's starts at 0 and jumps there at the first
    step, which throws its rate and time estimate off for many steps.
    """

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True
            )
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")


def show_progress(trainer: Trainer) -> None:
    """Replace the Trainer's terminal progress bar by :class:`LossProgressBar`."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(LossProgressBar)


class RunControl(TrainerCallback):
    """Ctrl-C stops after the current step with a checkpoint; times the run's steps."""

    def __init__(self, any_process: Callable[[bool], bool] = bool) -> None:
        """``any_process``: in a multi-process run, whether a flag is set in any process
        (:meth:`~wordybird.training.processes.Processes.any_process`), so that a Ctrl-C that
        reaches the processes at different moments stops them all after the same step."""
        self.interrupted = False
        self._any_process = any_process
        self.started = math.nan
        self.ended = math.nan
        self.first_step: int | None = None
        self.last_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        self.first_step = state.global_step
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs: Any) -> None:
        self.last_step = state.global_step
        self.interrupted = self._any_process(self.interrupted)
        if self.interrupted:
            control.should_training_stop = True
            control.should_save = True

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        self.ended = time.perf_counter()

    @contextmanager
    def catching_interrupts(self) -> Iterator[None]:
        """The first Ctrl-C asks for a clean stop; a second one interrupts at once."""

        def stop(signum: int, frame: Any) -> None:
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)
            message = "interrupt: stopping after this step and writing a checkpoint"
            tqdm.write(message, file=sys.stderr)

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
