"""What the capture hooks do at each recorded step, the same for ``watch`` and ``RecorderCallback``.

The first recorded step fixes what the recording says about itself: the optimizer and the
taps' metadata (by name; the notebook's layout keeps the metadata it always had), the
update rule of each field (``predictions``, in every mode: predictive mode stores fields
as differences from them, and ``wordybird analyze`` replays the parameters' rules), and,
with the live freeze monitor, which fields it adds (``<name>/moved``, by name only) and on
what sample of coordinates (``monitor``). Every recorded step then passes the monitor
before it goes to the recorder, so the monitor's warnings come in the training thread, at
the step that earned them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from wordybird.analysis.freeze import no_rule
from wordybird.capture.monitor import FreezeMonitor, Watched
from wordybird.capture.predictions import predictions_for
from wordybird.capture.taps import Taps, inner_optimizer, optimizer_metadata
from wordybird.errors import WordybirdError
from wordybird.recorder import StreamingRecorder
from wordybird.recorder.predict import Prediction

#: The monitor's field of a parameter recorded by name: ``<name>/moved``.
MOVED = "moved"
#: Parameter dtypes updated on a coarse lattice: the monitor is on by default for them.
LOW_PRECISION = (torch.bfloat16, torch.float16)

#: ``monitor=`` of ``watch`` and ``RecorderCallback``: None (on when a recorded parameter is
#: bf16 or fp16), True, False, or a monitor with settings of its own.
MonitorChoice = bool | FreezeMonitor | None


def check_record_every(record_every: int) -> int:
    """``record_every`` if it is a positive step count; else one clear error."""
    if record_every < 1:
        raise WordybirdError(f"record_every must be at least 1, got {record_every}")
    return record_every


def is_recorded(step: int, record_every: int) -> bool:
    """Whether a run recording every ``record_every``-th step records ``step``."""
    return step % record_every == 0


def choose_monitor(choice: MonitorChoice, taps: Taps) -> FreezeMonitor | None:
    """The monitor ``choice`` asks for; by default one when a recorded parameter is bf16 or
    fp16 (whose updates round away once below half their coarse spacing)."""
    if isinstance(choice, FreezeMonitor):
        return choice
    if choice is None:
        choice = any(p.dtype in LOW_PRECISION for p in taps.params.values())
    return FreezeMonitor() if choice else None


class RecordingSession:
    """The recorded steps of one run: ``record(...)`` records one (the first also writes the
    run's metadata and starts the monitor), ``close()`` lets the monitor finish.

    Args:
        recorder: the run's recorder; None on a process that only sends its rows to the
            main one (FSDP2), which records nothing.
        taps: the run's taps, whose ``fields()`` the hook hands to :meth:`record`.
        monitor: see :data:`MonitorChoice`.
        max_grad_norm: the norm the loop clips gradients to (None: no clipping), for the
            update rules.
    """

    def __init__(
        self,
        recorder: StreamingRecorder | None,
        taps: Taps,
        *,
        monitor: MonitorChoice = None,
        max_grad_norm: float | None = None,
    ) -> None:
        self.recorder = recorder
        self.taps = taps
        self.monitor = choose_monitor(monitor, taps)
        self.max_grad_norm = max_grad_norm
        self._first = True
        self._moved: dict[str, str] = {}  # parameter -> its monitor field
        self._predictions: dict[str, Prediction] = {}  # predictive mode's, for the first step

    def record(
        self,
        step: int,
        optimizer: Any,
        fields: Mapping[str, torch.Tensor],
        whole: Mapping[str, torch.Tensor],
        extra: Mapping[str, torch.Tensor | float] | None = None,
    ) -> None:
        """Record step ``step``: the taps' per-parameter ``fields`` and whole-step ``whole``
        fields, ``extra`` ones (the loss, …), and the monitor's."""
        assert self.recorder is not None, "only the main process records"
        if self._first:
            self._begin(step, optimizer, fields, whole)
        moved: dict[str, torch.Tensor] = {}
        if self.monitor is not None:
            fractions = self.monitor.observe(step, {**fields, **whole})
            moved = {field: fractions[name] for name, field in self._moved.items()}
        self.recorder.record(
            step, {**fields, **moved, **(extra or {}), **whole}, predictions=self._predictions
        )

    def close(self) -> None:
        """Let the monitor evaluate its last step (on a CUDA device it lags one behind)."""
        if self.monitor is not None:
            self.monitor.finish()

    def _begin(
        self,
        step: int,
        optimizer: Any,
        fields: Mapping[str, torch.Tensor],
        whole: Mapping[str, torch.Tensor],
    ) -> None:
        predictions, unpredicted = predictions_for(self.taps, optimizer, step, self.max_grad_norm)
        entries: dict[str, Any] = {}
        if not self.taps.notebook:
            entries = {"optimizer": optimizer_metadata(optimizer), **self.taps.metadata()}
        entries["predictions"] = {field: p.to_json() for field, p in predictions.items()}
        if self.monitor is not None:
            self.monitor.start(self._watched(optimizer, predictions), {**fields, **whole})
        self._moved = self._moved_fields()
        if self._moved:
            assert self.monitor is not None
            samples = self.monitor.samples()
            entries["monitor"] = {
                "threshold": self.monitor.threshold,
                "patience": self.monitor.patience,
                "fields": {
                    field: {"sample": samples[name][0], "of": samples[name][1]}
                    for name, field in self._moved.items()
                },
                "note": "the fraction of a fixed sample of the parameter's coordinates (every "
                "one where 'sample' equals 'of': then exact) whose value changed since the "
                "previous recorded step; NaN where the monitor had no previous step to compare "
                "with: the recording's first step, and the first after each resume",
            }
        self.recorder.update_metadata(entries)
        if self.recorder.mode == "predictive":
            if unpredicted:
                warnings.warn(
                    "wordybird: predictive mode knows no update rule of "
                    f"{type(inner_optimizer(optimizer)).__name__} (with these settings) for "
                    f"{', '.join(unpredicted)}; stored as in compact mode",
                    stacklevel=4,
                )
            self._predictions = dict(predictions)
        self._first = False

    def _watched(self, optimizer: Any, predictions: Mapping[str, Prediction]) -> dict[str, Watched]:
        """Each recorded parameter as the monitor follows it, with its value's rule."""
        narrowed = self.taps.metadata().get("store_dtype", {})
        cls = type(inner_optimizer(optimizer)).__name__
        watched = {}
        for name in self.taps.params:
            roles = self.taps.field_names(name)
            value = roles["value"]
            prediction = predictions.get(value)
            reason = None if prediction is not None else no_rule(cls)
            if value in narrowed.get("fields", ()):
                prediction, reason = (
                    None,
                    (
                        f"its values are narrowed to {narrowed['dtype']} (store_dtype) while the "
                        "optimizer updates a wider copy, so a freeze cannot be told to be rounding"
                    ),
                )
            watched[name] = Watched(name, value, roles.get("grad"), roles["lr"], prediction, reason)
        return watched

    def _moved_fields(self) -> dict[str, str]:
        """The monitor's fields: none in the notebook's layout (its fields are fixed) or
        without a monitor; in a new recording by name, ``<name>/moved`` per parameter; in a
        resumed one, those its first step had (its fields are fixed too)."""
        if self.taps.notebook:
            return {}
        wanted = {name: f"{name}/{MOVED}" for name in self.taps.params}
        held = _resumed_fields(self.recorder)
        if held is None:
            return wanted if self.monitor is not None else {}
        kept = {name: field for name, field in wanted.items() if field in held}
        if kept and self.monitor is None:
            raise WordybirdError(
                f"{self.recorder.path} records the freeze monitor's fields "
                f"({', '.join(kept.values())}) since its first step; resume it with the monitor "
                "on (monitor=True)"
            )
        return kept


def _resumed_fields(recorder: StreamingRecorder) -> set[str] | None:
    """The fields a resumed recording holds (None for a new one: its first step fixes
    them)."""
    return set(recorder.fields) if recorder.fields else None
