"""The live freeze monitor: a warning while training when a parameter stops moving.

At each recorded step (inside the capture hooks, before the step is handed to the
recorder, so its warnings come in the caller's thread, at the step that earned them) the
monitor compares each recorded parameter with its previous recorded step on a fixed sample
of coordinates: all of them up to :data:`SAMPLE_SIZE`, else that many evenly spaced flat
indices, gathered on the tensor's own device. The sampled moving fraction is recorded as
the scalar field ``<name>/moved`` (by-name recordings), so a run's freeze curve reads
without decoding a big field. When it stays below the threshold for ``patience``
consecutive recorded steps, the monitor warns once for that parameter, with a
:class:`~wordybird.errors.FreezeWarning` naming the step it froze from, the fraction, and
the cause, decided by the same rule as ``wordybird analyze`` (``analysis/freeze.py``) on
the sample: the optimizer's update rule, replayed with the predictive mode's predictor
(``analysis/predicted.py``), tells a rounding freeze from the others.

Cost: an ordinary step gathers one sample per parameter and compares it with the last
(64 Ki elements). The rule's inputs are gathered and the predictor runs only on steps
already below the threshold, and never again for a parameter once it warned. On a CUDA
device nothing waits for the GPU: the sample and its comparison stay there (the recorder
copies the fraction asynchronously, as it copies every field), the host copies for the
verdict are asynchronous, and they are read one recorded step later (a warning then comes
one recorded step late); on the CPU everything is immediate.

The warning goes through the warnings machinery (``warnings.warn``), so filters,
``pytest.warns``, ``-W error`` and ``logging.captureWarnings`` see it, printed once; while
a tqdm progress bar is active the bars are cleared around it and drawn again
(``tqdm.external_write_mode``), so the line stands in the progress output without
garbling it.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wordybird.analysis.freeze import (
    DEFAULT_PATIENCE,
    DEFAULT_THRESHOLD,
    StepEvidence,
    check_threshold,
    percent,
    verdict,
)
from wordybird.analysis.predicted import (
    SAMPLE_SIZE,
    predicted_moves,
    predicted_update,
    sample_indices,
)
from wordybird.dtypes import from_torch
from wordybird.errors import FreezeWarning, WordybirdError
from wordybird.recorder.predict import Prediction


@dataclass(frozen=True)
class Watched:
    """A recorded parameter as the monitor follows it: its fields by role (``value``,
    ``grad``, ``lr``), the update rule of its value (None: unknown, ``no_prediction`` says
    why)."""

    name: str
    value: str
    grad: str | None
    lr: str
    prediction: Prediction | None
    no_prediction: str | None = None


@dataclass
class _Follow:
    """What the monitor keeps of one parameter between steps."""

    watched: Watched
    index: torch.Tensor  # the sampled flat indices, on the parameter's device
    size: int
    previous: torch.Tensor | None = None  # the last step's sample, on the device
    previous_host: np.ndarray | None = None  # the same, on the host (after its evaluation)
    previous_step: int | None = None
    window: deque[StepEvidence] = field(default_factory=deque)
    warned: bool = False

    @property
    def sample(self) -> int:
        return int(self.index.numel())

    def describe_sample(self) -> str:
        if self.sample == self.size:
            return f"all {self.size:,} coordinates"
        return f"a sample of {self.sample:,} of its {self.size:,} coordinates"


@dataclass
class _Observation:
    """One parameter at one step, waiting for its evaluation on the host."""

    follow: _Follow
    step: int
    moved: torch.Tensor  # 0-d float32 (NaN at the first step)
    sample: torch.Tensor
    changed: torch.Tensor | None
    inputs: dict[str, torch.Tensor]  # the rule's inputs' samples (or scalars), by role
    grad: torch.Tensor | None
    learning_rate: float
    event: Any = None  # a CUDA event the host copies wait for
    moved_host: torch.Tensor | None = None  # ``moved`` copied to the host, on a CUDA device


class FreezeMonitor:
    """Warn once per parameter when its moving fraction stays below ``threshold`` for
    ``patience`` consecutive recorded steps (see the module).

    Give one to ``watch(..., monitor=FreezeMonitor(...))`` or
    ``RecorderCallback(..., monitor=...)`` to change its settings; ``monitor=True`` uses
    these defaults, ``monitor=False`` turns it off. One monitor follows one run.

    Args:
        threshold: the moving fraction (of the sampled coordinates) below which a step
            counts as frozen.
        patience: consecutive recorded steps below it before the warning.
        sample_size: coordinates followed per parameter (all, for smaller parameters).
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        patience: int = DEFAULT_PATIENCE,
        sample_size: int = SAMPLE_SIZE,
    ) -> None:
        self.threshold = check_threshold(threshold)
        if patience < 1:
            raise WordybirdError(f"patience must be at least 1 recorded step, got {patience}")
        if sample_size < 1:
            raise WordybirdError(f"sample_size must be at least 1, got {sample_size}")
        self.patience = patience
        self.sample_size = sample_size
        self._follows: dict[str, _Follow] = {}
        self._pending: deque[_Observation] = deque()
        #: the warnings given, by parameter name
        self.warned: dict[str, FreezeWarning] = {}

    def start(self, parameters: Mapping[str, Watched], fields: Mapping[str, torch.Tensor]) -> None:
        """Follow ``parameters``, whose tensors are in the first recorded step's ``fields``."""
        if self._follows:
            raise WordybirdError("a FreezeMonitor follows one run; give each run its own")
        for name, watched in parameters.items():
            value = fields[watched.value]
            size = value.numel()
            index = torch.from_numpy(sample_indices(size, self.sample_size))
            self._follows[name] = _Follow(
                watched, index.to(value.device), size, window=deque(maxlen=self.patience)
            )

    def samples(self) -> dict[str, tuple[int, int]]:
        """Per parameter: (coordinates followed, coordinates it has)."""
        return {name: (f.sample, f.size) for name, f in self._follows.items()}

    def observe(self, step: int, fields: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Take recorded step ``step``'s samples; the sampled moving fraction of each
        parameter (0-d float32 tensors, on its device; NaN at the first step)."""
        moved: dict[str, torch.Tensor] = {}
        on_device = False
        for name, follow in self._follows.items():
            observation = self._take(follow, step, fields)
            moved[name] = observation.moved
            on_device = on_device or observation.event is not None
            self._pending.append(observation)
        # CPU tensors are evaluated at once; CUDA ones one recorded step later, when their
        # host copies have long arrived (no synchronisation with the GPU's current work)
        keep = len(self._follows) if on_device else 0
        while len(self._pending) > keep:
            self._evaluate(self._pending.popleft())
        return moved

    def finish(self) -> None:
        """Evaluate what is still pending (the last step, on a CUDA device)."""
        while self._pending:
            self._evaluate(self._pending.popleft())

    # -- per step ------------------------------------------------------------------------

    def _take(self, follow: _Follow, step: int, fields: Mapping[str, torch.Tensor]) -> _Observation:
        w = follow.watched
        value = fields[w.value].detach()
        sample = _gather(value, follow.index)
        changed = None
        if follow.previous is None:
            moved = torch.tensor(math.nan, dtype=torch.float32)
        else:
            changed = sample != follow.previous
            moved = (torch.count_nonzero(changed).double() / follow.sample).float()
        follow.previous = sample
        learning_rate = float(fields[w.lr]) if w.lr in fields else math.nan
        cuda = value.device.type == "cuda"
        # the rule's inputs matter only below the threshold (known here at once on the CPU)
        wanted = not follow.warned and (cuda or (changed is not None and moved < self.threshold))
        inputs: dict[str, torch.Tensor] = {}
        grad = None
        if wanted:
            if w.prediction is not None:
                for role, source in w.prediction.inputs.items():
                    tensor = fields[source].detach()
                    same = tensor.shape == value.shape
                    inputs[role] = _gather(tensor, follow.index) if same else tensor
            if w.grad is not None:
                grad = _gather(fields[w.grad].detach(), follow.index)
        observation = _Observation(
            follow, step, moved, sample, changed, inputs, grad, learning_rate
        )
        if cuda:
            observation = _to_host(observation)
        return observation

    def _evaluate(self, o: _Observation) -> None:
        """Add the observation's evidence to its parameter's window; warn once when the
        window is full and frozen."""
        if o.event is not None:
            o.event.synchronize()
        follow = o.follow
        host = from_torch(o.sample)
        previous, previous_step = follow.previous_host, follow.previous_step
        follow.previous_host, follow.previous_step = host, o.step
        if follow.warned:
            return
        moved = float(o.moved if o.moved_host is None else o.moved_host)
        evidence = StepEvidence(o.step, None if math.isnan(moved) else moved, o.learning_rate)
        below = evidence.moved is not None and evidence.moved < self.threshold
        if below and o.changed is not None:
            # a warning quotes the update's size at the first step of the frozen run only
            run_starts = not follow.window or not _below(follow.window[-1], self.threshold)
            evidence = self._explain(o, evidence, previous, previous_step, sized=run_starts)
        follow.window.append(evidence)
        if len(follow.window) == self.patience and all(
            _below(e, self.threshold) for e in follow.window
        ):
            self._warn(follow, list(follow.window))

    def _explain(
        self,
        o: _Observation,
        evidence: StepEvidence,
        previous: np.ndarray | None,
        previous_step: int | None,
        *,
        sized: bool,
    ) -> StepEvidence:
        """The step's evidence with its cause's parts: the sampled gradient's zeros and
        the rule's predicted moves (when the previous step is the previous optimizer step),
        and with ``sized`` the median size of its update (the costliest part)."""
        w = o.follow.watched
        gradient_zero = None if o.grad is None else not bool(torch.count_nonzero(o.grad))
        if (
            w.prediction is None
            or previous is None
            or previous_step != o.step - 1
            or set(o.inputs) != set(w.prediction.inputs)
        ):
            return StepEvidence(o.step, evidence.moved, evidence.learning_rate, gradient_zero)
        inputs = {role: from_torch(t.cpu()) for role, t in o.inputs.items()}
        moves = predicted_moves(w.prediction, previous, inputs, o.step)
        median = None
        if sized:
            median = float(np.median(predicted_update(w.prediction, previous, inputs, o.step).ulps))
        changed = from_torch(o.changed.cpu()) if o.changed is not None else None
        return StepEvidence(
            evidence.step,
            evidence.moved,
            evidence.learning_rate,
            gradient_zero,
            float(np.count_nonzero(moves)) / moves.size,
            float(np.count_nonzero(moves == changed)) / moves.size,
            median,
        )

    def _warn(self, follow: _Follow, window: list[StepEvidence]) -> None:
        follow.warned = True
        w = follow.watched
        found = verdict(window, self.threshold, w.no_prediction)
        last = window[-1]
        message = (
            f"wordybird: {w.name} is frozen from step {found.frozen_from_step}: fewer than "
            f"{self.threshold:g} of its coordinates changed at each of its last "
            f"{self.patience} recorded steps (at step {last.step}: {percent(last.moved)}, "
            f"{follow.describe_sample()}); cause: {found.cause}: {found.reason}"
            + (f"; remedy: {found.remedy}" if found.remedy else "")
        )
        warning = FreezeWarning(
            message,
            parameter=w.name,
            step=found.frozen_from_step,
            at_step=last.step,
            fraction=last.moved,
            cause=found.cause,
        )
        self.warned[w.name] = warning
        with tqdm.external_write_mode(file=sys.stderr):
            warnings.warn(warning, stacklevel=_caller_level())


def _below(evidence: StepEvidence, threshold: float) -> bool:
    return evidence.moved is not None and evidence.moved < threshold


#: Libraries whose frames lie between the monitor and the code that stepped the optimizer.
_LIBRARIES = ("wordybird", "torch", "transformers", "accelerate")


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside wordybird and the training libraries
    (the loop's ``optimizer.step()``, a script's ``trainer.train()``), so that the warning
    names the user's line rather than one of ours; counted from :meth:`FreezeMonitor._warn`."""
    folders = tuple(
        os.path.dirname(module.__file__) + os.sep
        for name in _LIBRARIES
        if (module := sys.modules.get(name)) is not None and getattr(module, "__file__", None)
    )
    frame, level = sys._getframe(2), 2  # 1 is _warn itself
    while frame is not None and frame.f_code.co_filename.startswith(folders):
        frame, level = frame.f_back, level + 1
    return level


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The sampled coordinates of ``tensor`` (a copy: the tensor itself moves on)."""
    return tensor.reshape(-1).index_select(0, index)


def _to_host(o: _Observation) -> _Observation:
    """The observation with its device tensors copied to the host asynchronously (into
    pinned memory), and the event that says when the copies are done."""

    def host(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to("cpu", non_blocking=True)

    copied = _Observation(
        o.follow,
        o.step,
        o.moved,  # stays on the device: recorded as it is, read once the copies are done
        host(o.sample),
        host(o.changed),
        {role: host(t) for role, t in o.inputs.items()},
        host(o.grad),
        o.learning_rate,
        torch.cuda.Event(),
        host(o.moved),
    )
    copied.event.record()
    return copied
