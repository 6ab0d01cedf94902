"""``RecorderCallback``: record a Hugging Face ``Trainer`` run step by step.

The gradients, optimizer state and learning rates come from the taps shared with plain
loops (``wordybird.capture.taps``); what only a Trainer run has, a forward hook adds: the
step's loss (the loss the Trainer logs for it, over all its accumulation micro-batches) and
the logits of the last batch's first sequence at its last position. Steps go to a
:class:`~wordybird.recorder.StreamingRecorder`, which copies them and writes in the
background: nothing accumulates in RAM.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

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
from wordybird.capture.taps import Taps
from wordybird.errors import WordybirdError
from wordybird.recorder import StreamingRecorder


class RecorderCallback(TrainerCallback):
    """Record parameters' training trajectories into a :class:`StreamingRecorder`.

    By default, the notebook's recording of the input embedding: per recorded step
    ``embeddings`` (the parameter after the optimizer step), ``grads`` (its gradient before
    clipping; zero in a step whose loss did not use it), ``momentum``/``variance`` (Adam's
    ``exp_avg`` and ``exp_avg_sq`` after the step; only with an optimizer that has them),
    ``logits`` (first sequence, last position), ``losses``, ``learning_rates`` (the LR that
    step used) and ``grad_norms`` (the pre-clip global gradient norm over all trainable
    parameters, in fp32). Tensors keep the parameter's dtype; logits and losses are stored
    as bf16 like the notebook's.

    With ``parameters``, any parameters by name, with the optimizer's own state: fields
    ``<name>/value``, ``<name>/grad``, ``<name>/<state key>``, ``<name>/lr`` (and
    ``<name>/rows``), besides ``logits``, ``losses`` and ``grad_norms`` (see
    ``wordybird.capture.taps``).

    Args:
        recorder: where steps go; the callback closes it when training ends. In a
            multi-process run (torchrun, accelerate launch) only the main process records:
            give it the recorder and ``None`` to the others, whose callbacks add no hook but
            the loss's (the gradients collected are already averaged across processes).
        parameters: names or glob patterns of ``model.named_parameters()``, or a predicate
            on (name, parameter); ``None``: the notebook's input embedding.
        rows: record only these rows (indices or a boolean mask) of every chosen parameter,
            or a mapping from parameter name to its rows.
        store_dtype: record values, gradients and state in this dtype, e.g.
            ``torch.bfloat16`` for fp32 master weights (lossy; said in the metadata).
        record_every: record steps whose number is a multiple of this.
        record_initial: record the state at the starting step (zero grads, NaN loss, zero
            logits, and the optimizer state then). Off when resuming a run
            whose recording already holds that step.
        monitor: the live freeze monitor (``wordybird.capture.monitor``): None (the
            default) turns it on when a recorded parameter is bf16 or fp16; True or False
            turn it on or off; a ``FreezeMonitor(...)`` brings its own settings. It warns
            (``wordybird.FreezeWarning``) once per parameter that stops moving; by name it
            also records each parameter's sampled moving fraction as ``<name>/moved`` (the
            notebook's layout keeps its fields exactly: no field is added there).
    """

    def __init__(
        self,
        recorder: StreamingRecorder | None,
        *,
        parameters: ParameterChoice | Iterable[ParameterChoice] | None = None,
        rows: Rows | Mapping[str, Rows] | None = None,
        store_dtype: torch.dtype | None = None,
        record_every: int = 1,
        record_initial: bool = True,
        monitor: MonitorChoice = None,
    ) -> None:
        check_record_every(record_every)
        if parameters is None and (rows is not None or store_dtype is not None):
            raise WordybirdError(
                "rows= and store_dtype= need parameters= (the notebook's layout records the "
                "whole embedding in its own dtype)"
            )
        self.recorder = recorder
        self.parameters = parameters
        self.rows = rows
        self.store_dtype = store_dtype
        self.record_every = record_every
        self.record_initial = record_initial
        self.monitor = monitor
        self._taps: Taps | None = None
        self._session: RecordingSession | None = None
        self._vocab = 0
        self._loss_sum: torch.Tensor | None = None
        self._forwards = 0
        self._loss_shares = False  # the model's losses are shares of the step's mean
        self._tokens_across_processes = False  # ... of the whole global batch's
        self._logits: torch.Tensor | None = None
        self._max_grad_norm: float | None = None  # what the Trainer clips to (predictive mode)
        self._writes = True  # this process records (the main one of a multi-process run)
        self._handles: list[Any] = []

    # -- hooks ----------------------------------------------------------------------------

    def _on_forward(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        logits = (
            output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
        )
        # Copies of exactly what is recorded: a view such as ``logits[0, -1]`` would pin the
        # whole [batch, seq, vocab] activation (823 MB at the notebook's shapes) until the
        # next forward, so two of them would coexist at the step's peak.
        if loss is not None:
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._forwards += 1
            if kwargs.get("num_items_in_batch") is not None:
                self._loss_shares = True
        if logits is not None:
            self._logits = logits.detach()[0, -1].to(torch.bfloat16, copy=True)

    def _install(self, model: nn.Module, optimizer: Any) -> None:
        model = unwrap(model)
        self._handles.append(model.register_forward_hook(self._on_forward, with_kwargs=True))
        if not self._writes:
            return  # the main process records; here only the loss is needed (see _step_loss)
        if self.parameters is None:
            params = {"input embedding": model.get_input_embeddings().weight}
        else:
            params = select_parameters(model, self.parameters)
        self._taps = Taps(
            model,
            params,
            notebook=self.parameters is None,
            rows=rows_by_name(params, self.rows),
            store_dtype=self.store_dtype,
            # fp16 mixed precision: Accelerate's optimizer holds the loss scaler
            scaler=getattr(optimizer, "scaler", None),
        )
        self._session = RecordingSession(
            self.recorder,
            self._taps,
            monitor=self.monitor,
            max_grad_norm=self._max_grad_norm,
        )
        config = getattr(model, "config", None)
        first = next(iter(params.values()))
        self._vocab = int(getattr(config, "vocab_size", 0) or first.shape[0])

    def remove_hooks(self) -> None:
        """Detach every hook from the model (also done at train end)."""
        if self._taps is not None:
            self._taps.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- recording ------------------------------------------------------------------------

    def _record(self, step: int, optimizer: Any, *, initial: bool) -> None:
        params, whole = self._taps.fields(step, optimizer, initial=initial)
        if initial:
            logits = torch.zeros(self._vocab, dtype=torch.bfloat16)
            loss = torch.tensor(math.nan, dtype=torch.bfloat16)
        else:
            if self._loss_sum is None or self._logits is None:
                raise WordybirdError(
                    f"step {step}: the model's forward returned no loss/logits to record"
                )
            logits = self._logits
            loss = self._step_loss().to(torch.bfloat16)
        self._session.record(step, optimizer, params, whole, {"logits": logits, "losses": loss})

    def _step_loss(self) -> torch.Tensor:
        """The step's loss: the mean over its micro-batches, and in a multi-process run over
        every process's (equal) share of the global batch, as one process's run with the
        same global batch would compute it. Every process takes part in the all-reduce."""
        if self._loss_sum is None:
            raise WordybirdError("the model's forward returned no loss to record")
        # Given the step's token count (a Trainer passes it to models that take loss kwargs),
        # each micro-batch's loss is its share of the step's mean: the shares add up.
        loss = self._loss_sum if self._loss_shares else self._loss_sum / self._forwards
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)
            if not (self._loss_shares and self._tokens_across_processes):
                loss = loss / dist.get_world_size()  # a mean per process: their mean
        return loss

    def records(self, step: int) -> bool:
        """Whether ``step`` is one this callback records."""
        return is_recorded(step, self.record_every)

    # -- Trainer events -------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise WordybirdError("RecorderCallback needs the Trainer to pass the model")
        shards.refuse_other_sharding(model, optimizer)
        if any(shards.is_dtensor(p) for p in model.parameters()):
            raise WordybirdError(  # accelerate ignores the Trainer's FSDP on CPU: untestable
                "RecorderCallback does not record sharded (FSDP2/DTensor) parameters; "
                f"{shards.SUPPORTED} in a loop of your own"
            )
        self._writes = state.is_world_process_zero
        max_norm = getattr(args, "max_grad_norm", None)  # the Trainer clips only to one > 0
        self._max_grad_norm = float(max_norm) if max_norm and max_norm > 0 else None
        self._tokens_across_processes = bool(getattr(args, "average_tokens_across_devices", False))
        if self._writes and self.recorder is None:
            raise WordybirdError("RecorderCallback(None) on the main process: nothing records")
        if not self._writes and self.recorder is not None:
            raise WordybirdError(
                f"process {args.process_index} of {args.world_size} was given a recorder: "
                "create it on the main process only and pass None elsewhere (one store, one "
                "writer)"
            )
        self._install(model, optimizer)
        if self._writes and self.record_initial and self._taps.can_record_initial(optimizer):
            self._record(state.global_step, optimizer, initial=True)

    def on_step_begin(self, args, state, control, **kwargs: Any) -> None:
        if self._taps is not None:
            self._taps.begin_step()
        self._loss_sum = self._logits = None
        self._forwards = 0
        self._loss_shares = False

    def on_pre_optimizer_step(self, args, state, control, optimizer: Any = None, **kwargs):
        # the LR this step uses; the scheduler moves it right after optimizer.step()
        if self._taps is not None:
            self._taps.note_learning_rates(optimizer)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.records(state.global_step):
            if self._writes:
                self._record(state.global_step, optimizer, initial=False)
            else:
                self._step_loss()  # the main process's all-reduce of the loss needs ours
        if self.recorder is not None and (control.should_save or control.should_training_stop):
            # a checkpoint must never be ahead of the recording it will resume
            self.recorder.flush()

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and close the recorder (writes every queued step)."""
        self.remove_hooks()
        if self._session is not None:
            self._session.close()
        if self.recorder is not None:
            self.recorder.close()
