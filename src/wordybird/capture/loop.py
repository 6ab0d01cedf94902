"""``wordybird.watch``: record a plain PyTorch training loop on every ``optimizer.step()``.

Two added lines record a nanoGPT-style loop::

    recorder = wordybird.StreamingRecorder("run.zarr")
    run = wordybird.watch(model, optimizer, recorder, parameters=["transformer.wte.weight"])
    for it in range(max_iters):
        ...
        loss.backward()
        run.log(losses=loss)          # optional: extra fields recorded with this step
        optimizer.step()              # recorded here: value, pre-clip grad, state, lr
        optimizer.zero_grad(set_to_none=True)
    run.close()                       # or: with wordybird.watch(...) as run:

The optimizer's step hooks drive it: its pre-hook notes the learning rates the step uses,
its post-hook reads the parameters and the optimizer's state and hands the step to the
recorder. The gradients come from the parameters' post-accumulate-grad hooks, so the
recorded gradient is the one backward produced: summed over accumulation micro-batches and
before any clipping. A step whose ``optimizer.step()`` is skipped (an AMP grad scaler found
an inf) is not recorded, because it did not happen. A mixed-precision loop passes its
``GradScaler`` (``scaler=``): backward's gradients are scaled by it, and are recorded
unscaled, as the optimizer is given them.

In a multi-process run the main process (rank 0) records and the others pass ``None`` for
the recorder. Under DDP they need no ``watch`` at all (the gradients are already averaged
everywhere); under FSDP2 every process must call it, because each holds only its rows of
the parameters, which it sends to the main one at every recorded step
(``wordybird.capture.shards``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import torch
from torch import nn

from wordybird.capture import shards
from wordybird.capture.parameters import (
    ParameterChoice,
    Rows,
    rows_by_name,
    select_parameters,
    unwrap,
)
from wordybird.capture.session import (
    MonitorChoice,
    RecordingSession,
    check_record_every,
    is_recorded,
)
from wordybird.capture.taps import Taps, inner_optimizer
from wordybird.errors import WordybirdError
from wordybird.recorder import StreamingRecorder


class Watch:
    """Record ``parameters`` of ``model`` at every ``optimizer.step()`` into ``recorder``.

    Fields per parameter ``<name>``: ``<name>/value`` (after the step), ``<name>/grad``
    (before clipping, summed over accumulation micro-batches), one ``<name>/<key>`` per
    tensor the optimizer holds for it, ``<name>/lr``, ``<name>/rows`` with ``rows=``; and
    ``grad_norms`` (the pre-clip global norm) and whatever :meth:`Watch.log` adds. Steps
    are numbered by optimizer step from 1 (after a resumed recording's last step).

    Args:
        recorder: where steps go; ``None`` on the processes other than the main one of a
            multi-process run (under FSDP2 they call ``watch`` too, to send their rows).
        parameters: names or glob patterns of ``model.named_parameters()``, or a predicate
            on (name, parameter).
        rows: record only these rows (indices or a boolean mask) of every chosen parameter,
            or a mapping from parameter name to its rows.
        store_dtype: record values, gradients and state in this dtype (e.g. bf16 for fp32
            master weights: lossy, said in the metadata).
        record_every: record optimizer steps whose number is a multiple of this.
        scaler: the loop's ``torch.amp.GradScaler``, if it scales the loss: the recorded
            gradients and their norm are divided by its scale, as ``scaler.unscale_``
            divides them for the optimizer (without it they would be recorded scaled).
            Accelerate's prepared optimizer brings its own.
        max_grad_norm: the norm the loop clips gradients to (``clip_grad_norm_``) before
            each step, which the update rules then follow (predictive mode, the analysis);
            None: the loop does not clip (a wrong value costs size, never exactness).
        monitor: the live freeze monitor (``wordybird.capture.monitor``): None (the
            default) turns it on when a recorded parameter is bf16 or fp16; True or False
            turn it on or off; a ``FreezeMonitor(...)`` brings its own settings. It warns
            (``wordybird.FreezeWarning``) once per parameter that stops moving, and records
            each parameter's sampled moving fraction as ``<name>/moved``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        recorder: StreamingRecorder | None,
        *,
        parameters: ParameterChoice | Iterable[ParameterChoice],
        rows: Rows | Mapping[str, Rows] | None = None,
        store_dtype: torch.dtype | None = None,
        record_every: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        max_grad_norm: float | None = None,
        monitor: MonitorChoice = None,
    ) -> None:
        check_record_every(record_every)
        shards.refuse_other_sharding(model, optimizer)
        shards.check_recorder_here(recorder)
        # Accelerate's wrapper steps the optimizer inside only when a step is really taken
        # (not while accumulating, not when its loss scaler skips one): hook that one
        inner = inner_optimizer(optimizer)
        if not isinstance(inner, torch.optim.Optimizer):
            raise WordybirdError(
                f"watch() needs a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if scaler is None:
            scaler = getattr(optimizer, "scaler", None)  # Accelerate's, with fp16
        model = unwrap(model)
        params = select_parameters(model, parameters)
        self.recorder = recorder
        self.optimizer = optimizer
        self.record_every = record_every
        self.max_grad_norm = max_grad_norm
        #: the number of the last optimizer step taken (continuing a resumed recording)
        self.step = (recorder.last_step if recorder is not None else None) or 0
        self._taps = Taps(
            model, params, rows=rows_by_name(params, rows), store_dtype=store_dtype, scaler=scaler
        )
        self._session = RecordingSession(
            recorder,
            self._taps,
            monitor=monitor,
            max_grad_norm=max_grad_norm,
        )
        self._extra: dict[str, Any] = {}
        self._handles: list[Any] = []
        if recorder is None and not self._taps.shards:
            self._taps.remove()  # DDP: the main process records alone; nothing to do here
            return
        if self._taps.shards:  # every process records the same steps: the main one's count
            start = torch.tensor([self.step])
            torch.distributed.broadcast(start, src=0)
            self.step = int(start)
        self._handles = [
            inner.register_step_pre_hook(self._before_step),
            inner.register_step_post_hook(self._after_step),
        ]

    def log(self, **fields: torch.Tensor | float) -> None:
        """Fields to record with the coming optimizer step besides the parameters' (the
        loss, say). Recorded fields are fixed by the first recorded step: log the same
        names before every recorded step."""
        self._extra.update(fields)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._taps.note_learning_rates(optimizer)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step += 1
        fields = None
        if is_recorded(self.step, self.record_every):
            fields = self._taps.fields(self.step, optimizer, initial=False)
        if fields is not None:  # None: a process that sent its rows to the main one
            params, whole = fields
            extra = {name: _detached(value) for name, value in self._extra.items()}
            self._session.record(self.step, optimizer, params, whole, extra)
        self._extra.clear()
        self._taps.begin_step()

    def close(self) -> None:
        """Remove the hooks and close the recorder (writes every queued step)."""
        self._unhook()
        self._session.close()
        if self.recorder is not None:
            self.recorder.close()

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._taps.remove()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        self._unhook()  # keep what was recorded; the caller's error goes on
        if self.recorder is not None:
            self.recorder.__exit__(exc_type, exc, tb)


def _detached(value: torch.Tensor | float) -> torch.Tensor | float:
    return value.detach() if isinstance(value, torch.Tensor) else value


#: ``wordybird.watch(model, optimizer, recorder, parameters=...)`` starts a :class:`Watch`.
watch = Watch
