"""``RecorderCallback``: record a Hugging Face ``Trainer`` run step by step.

What a callback alone cannot see, hooks provide:

- the gradient *before* clipping: the Trainer clips before ``on_pre_optimizer_step``, so a
  post-accumulate-grad hook copies the recorded parameter's gradient into one persistent
  buffer as backward produces it (and notes every parameter's gradient norm, for the
  pre-clip global norm);
- the loss and logits: a forward hook on the model keeps the last output's loss and the
  logits of the batch's first sequence at its last position.

Everything else (the parameter after the optimizer step, Adam's ``exp_avg``/``exp_avg_sq``,
the learning rate used) is read in the callback events. Steps go to a
:class:`~wordybird.recorder.StreamingRecorder`, which copies them and writes in the
background: nothing accumulates in RAM.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from wordybird.errors import WordybirdError
from wordybird.recorder import StreamingRecorder

#: picks the recorded parameter from the model
ParameterSelector = Callable[[nn.Module], nn.Parameter]
#: The optimizer state recorded, by field: Adam's first and second moment estimates.
ADAM_STATE = {"momentum": "exp_avg", "variance": "exp_avg_sq"}


def _is_adam(optimizer: Any) -> bool:
    """Adam or AdamW (Accelerate wraps the torch optimizer in ``.optimizer``)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return isinstance(inner, torch.optim.Adam | torch.optim.AdamW)


def input_embedding(model: nn.Module) -> nn.Parameter:
    """The default recorded parameter: the input embedding matrix (tied to GPT-2's head)."""
    return model.get_input_embeddings().weight


def _unwrap(model: nn.Module) -> nn.Module:
    # DataParallel/DDP and torch.compile wrap the model; selectors expect the real one.
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class RecorderCallback(TrainerCallback):
    """Record one parameter's training trajectory into a :class:`StreamingRecorder`.

    Per recorded step: ``embeddings`` (the parameter after the optimizer step), ``grads``
    (its gradient before clipping; zero in a step whose loss did not use it),
    ``momentum``/``variance`` (Adam's ``exp_avg`` and ``exp_avg_sq`` after the step; only
    with an optimizer that has them), ``logits`` (first sequence, last position), ``losses``,
    ``learning_rates`` (the LR that step used) and ``grad_norms`` (the pre-clip global
    gradient norm over all trainable parameters, computed in fp32). Tensors keep the
    parameter's dtype; logits and losses are stored as bf16 like the notebook's.

    Args:
        recorder: where steps go; the callback closes it when training ends.
        parameter: which parameter to record (default: the input embedding).
        record_every: record steps whose number is a multiple of this.
        record_initial: record the state at the starting step (zero grads, NaN loss, zero
            logits, and the optimizer state then). Off when resuming a run
            whose recording already holds that step.
    """

    def __init__(
        self,
        recorder: StreamingRecorder,
        *,
        parameter: ParameterSelector = input_embedding,
        record_every: int = 1,
        record_initial: bool = True,
    ) -> None:
        if record_every < 1:
            raise WordybirdError(f"record_every must be at least 1, got {record_every}")
        self.recorder = recorder
        self.select = parameter
        self.record_every = record_every
        self.record_initial = record_initial
        self._param: nn.Parameter | None = None
        self._vocab = 0
        self._grad: torch.Tensor | None = None
        self._grad_seen = False  # whether backward produced the recorded gradient this step
        self._state_keys: dict[str, str] | None = None  # field -> optimizer state key
        self._grad_sq_norms: dict[int, torch.Tensor] = {}
        self._loss: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._lr = math.nan
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
            self._loss = loss.detach().to(torch.bfloat16, copy=True)
        if logits is not None:
            self._logits = logits.detach()[0, -1].to(torch.bfloat16, copy=True)

    def _on_param_grad(self, param: torch.Tensor) -> None:
        self._grad_sq_norms[id(param)] = torch.linalg.vector_norm(
            param.grad.detach(), dtype=torch.float32
        ).square()
        if param is self._param:
            self._grad.copy_(param.grad)
            self._grad_seen = True

    def _install(self, model: nn.Module) -> None:
        model = _unwrap(model)
        self._param = self.select(model)
        config = getattr(model, "config", None)
        self._vocab = int(getattr(config, "vocab_size", 0) or self._param.shape[0])
        # one buffer for the whole run: copy_ into it, never allocate per step
        self._grad = torch.zeros_like(self._param, memory_format=torch.contiguous_format)
        self._handles.append(model.register_forward_hook(self._on_forward, with_kwargs=True))
        seen: set[int] = set()
        for p in model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_param_grad))

    def remove_hooks(self) -> None:
        """Detach every hook from the model (also done at train end)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- recording ------------------------------------------------------------------------

    def _optimizer_state(self, optimizer: Any, step: int) -> dict[str, torch.Tensor]:
        """The recorded parameter's Adam moments, as the ``momentum``/``variance`` fields.

        Only state the optimizer really has is recorded. Adam and AdamW define their moment
        estimates to start at zero and create them lazily at a parameter's first update, so
        before it (the initial state; a parameter that has had no gradient yet) their true
        value is zero. Other optimizers (SGD, Adafactor, 8-bit Adam, …) hold no such
        tensors: their recordings have no ``momentum``/``variance`` fields, said once.
        """
        if self._state_keys is None:
            self._state_keys = self._choose_state_keys(optimizer)
        state = optimizer.state.get(self._param, {}) if optimizer is not None else {}
        tensors = {}
        for field, key in self._state_keys.items():
            value = state.get(key)
            if value is None:
                if not _is_adam(optimizer):
                    raise WordybirdError(
                        f"step {step}: the optimizer no longer holds {key!r} for the recorded "
                        "parameter, which earlier steps recorded"
                    )
                value = torch.zeros_like(self._param)
            tensors[field] = value
        return tensors

    def _choose_state_keys(self, optimizer: Any) -> dict[str, str]:
        state = optimizer.state.get(self._param, {}) if optimizer is not None else {}
        if _is_adam(optimizer) or all(key in state for key in ADAM_STATE.values()):
            return dict(ADAM_STATE)
        name = type(getattr(optimizer, "optimizer", optimizer)).__name__
        warnings.warn(
            f"wordybird: the optimizer ({name}) holds no Adam exp_avg/exp_avg_sq for the "
            "recorded parameter; the recording has no momentum/variance fields",
            stacklevel=2,
        )
        return {}

    def _record(self, step: int, optimizer: Any, *, initial: bool) -> None:
        state = self._optimizer_state(optimizer, step)
        param = self._param.detach()
        if initial:
            grad = torch.zeros_like(param)
            logits = torch.zeros(self._vocab, dtype=torch.bfloat16)
            loss = torch.tensor(math.nan, dtype=torch.bfloat16)
            lr = torch.tensor(self._current_lr(optimizer), dtype=torch.float32)
            norm = torch.tensor(0.0, dtype=torch.float32)
        else:
            if self._loss is None or self._logits is None:
                raise WordybirdError(
                    f"step {step}: the model's forward returned no loss/logits to record"
                )
            if not self._grad_seen:  # the loss did not depend on it: its gradient is zero
                self._grad.zero_()
            grad = self._grad
            logits, loss = self._logits, self._loss
            lr = torch.tensor(self._lr, dtype=torch.float32)
            norms = list(self._grad_sq_norms.values())
            norm = torch.stack(norms).sum().sqrt() if norms else torch.tensor(0.0)
        self.recorder.record(
            step,
            {
                "embeddings": param,
                "grads": grad,
                **state,
                "logits": logits,
                "losses": loss,
                "learning_rates": lr,
                "grad_norms": norm,
            },
        )

    @staticmethod
    def _current_lr(optimizer: Any) -> float:
        return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else math.nan

    def records(self, step: int) -> bool:
        """Whether ``step`` is one this callback records."""
        return step % self.record_every == 0

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
        self._install(model)
        if self.record_initial:
            self._record(state.global_step, optimizer, initial=True)

    def on_step_begin(self, args, state, control, **kwargs: Any) -> None:
        self._grad_sq_norms.clear()
        self._grad_seen = False
        self._loss = self._logits = None

    def on_pre_optimizer_step(self, args, state, control, optimizer: Any = None, **kwargs):
        # the LR this step uses; the scheduler moves it right after optimizer.step()
        self._lr = self._current_lr(optimizer)

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if self.records(state.global_step):
            self._record(state.global_step, optimizer, initial=False)
        if control.should_save or control.should_training_stop:
            # a checkpoint must never be ahead of the recording it will resume
            self.recorder.flush()

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and close the recorder (writes every queued step)."""
        self.remove_hooks()
        self.recorder.close()
