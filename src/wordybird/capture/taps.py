"""The hooks and reads that turn a training step into a recording's fields.

What an optimizer step leaves behind is not enough: the Trainer and most loops clip the
gradient in place before the step, and the loss is gone by then. So a post-accumulate-grad
hook copies each recorded parameter's gradient into one persistent buffer as backward
produces it (with accumulation, the last copy is the sum over the micro-batches: the
gradient the optimizer was given, before clipping), and notes every trainable parameter's
gradient norm for the pre-clip global norm. The parameter itself and the optimizer's state
are read after the step; the learning rate just before it (a scheduler moves it after).

Two layouts of fields:

- the notebook's (``Taps(..., notebook=True)``, one parameter): ``embeddings``, ``grads``,
  ``momentum``/``variance`` (Adam's ``exp_avg``/``exp_avg_sq``), ``learning_rates``,
  ``grad_norms``;
- by name (any parameters, any optimizer): ``<name>/value``, ``<name>/grad``, one
  ``<name>/<key>`` per tensor the optimizer holds for it (``exp_avg``, ``momentum_buffer``,
  ``square_avg``, ``row_var``…), ``<name>/lr`` (its group's learning rate; NaN where the
  group holds none, as transformers' ``Adafactor`` with ``relative_step=True``) and
  ``<name>/rows`` (with ``rows=``), and ``grad_norms``.

Under FSDP2 each process's hooks see its rows of a parameter, their reduce-scattered
gradient and their state; ``shards.py`` gathers the recorded ones whole to the main process
(every process calls :meth:`Taps.fields` for the same steps) and the global norm sums every
process's shards.

Only state the optimizer really holds is recorded. Adam and AdamW define theirs to start at
zero (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) and create it at a
parameter's first update, so before that update zero is its true value. Any other missing
state is not invented: a parameter without state records none (said once), and a loop
whose optimizer holds no state yet cannot record its initial step by name.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from wordybird.capture.shards import (
    SUPPORTED,
    ShardedRows,
    is_dtensor,
    local,
    sharded,
    sum_over_processes,
)
from wordybird.errors import WordybirdError

if TYPE_CHECKING:
    from torch.amp import GradScaler

#: The notebook's names for Adam's moments.
NOTEBOOK_STATE = {"momentum": "exp_avg", "variance": "exp_avg_sq"}
#: Adam/AdamW state that is zero until the parameter's first update.
ADAM_ZERO_STATE = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer (Accelerate wraps it in ``.optimizer``)."""
    return getattr(optimizer, "optimizer", optimizer)


def is_adam(optimizer: Any) -> bool:
    return isinstance(inner_optimizer(optimizer), torch.optim.Adam | torch.optim.AdamW)


def _adam_keys(optimizer: Any, param: nn.Parameter) -> list[str]:
    amsgrad = _group_of(optimizer, param).get("amsgrad", False)
    return [k for k in ADAM_ZERO_STATE if amsgrad or k != "max_exp_avg_sq"]


def _group_of(optimizer: Any, param: nn.Parameter) -> dict[str, Any]:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise WordybirdError("the optimizer does not update a recorded parameter")


def _learning_rate(group: Mapping[str, Any]) -> float:
    """The group's learning rate; NaN where it holds none (transformers' ``Adafactor`` with
    ``relative_step=True`` keeps ``lr=None`` and computes its own step size per parameter)."""
    lr = group.get("lr")
    if isinstance(lr, torch.Tensor) or (isinstance(lr, int | float) and not isinstance(lr, bool)):
        return float(lr)
    return math.nan


def optimizer_metadata(optimizer: Any) -> dict[str, Any]:
    """The optimizer's class and hyperparameters per group (without the parameters)."""
    inner = inner_optimizer(optimizer)
    groups = [
        {
            k: v
            for k, v in group.items()
            if k != "params" and isinstance(v, (int, float, tuple, bool, str))
        }
        for group in inner.param_groups
    ]
    return {"class": type(inner).__name__, "param_groups": groups}


class Taps:
    """Hooks on a model and reads of its optimizer, giving each recorded step's fields.

    Args:
        model: the (unwrapped) model; every trainable parameter gets a gradient hook.
        parameters: the recorded parameters by name (see ``parameters.select_parameters``).
        notebook: the notebook's field names (exactly one parameter).
        rows: per parameter name, the sorted indices of the rows to record.
        store_dtype: record value, gradient and state tensors in this dtype (lossy when
            narrower, e.g. fp32 master weights as bf16); scalar state keeps its own.
        scaler: the mixed-precision loop's gradient scaler (``torch.amp.GradScaler``):
            backward then produces gradients multiplied by its scale, and they are recorded
            divided by it, as ``scaler.unscale_`` gives them to the optimizer.
    """

    def __init__(
        self,
        model: nn.Module,
        parameters: Mapping[str, nn.Parameter],
        *,
        notebook: bool = False,
        rows: Mapping[str, torch.Tensor] | None = None,
        store_dtype: torch.dtype | None = None,
        scaler: GradScaler | None = None,
    ) -> None:
        if notebook and len(parameters) != 1:
            raise WordybirdError("the notebook's layout records exactly one parameter")
        self.params = dict(parameters)
        self.notebook = notebook
        self.rows = {name: index for name, index in (rows or {}).items()}
        self.store_dtype = store_dtype
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self._grads: dict[str, torch.Tensor] = {}
        self._grad_seen: set[str] = set()
        self._grad_sq_norms: dict[int, torch.Tensor] = {}  # of the scaled gradients
        self._inv_scale = 1.0  # the grad scaler's 1 / scale at the last backward
        self._lrs: dict[str, float] = {}
        self._state_keys: dict[str, dict[str, str]] | None = None  # name -> field -> key
        self._narrowed: set[str] = set()  # the fields store_dtype converts
        #: FSDP2 parameters recorded: this process holds (and collects) only its rows
        self.shards = sharded(model, self.params, self.rows)
        for name, param in self.params.items():
            index = self.rows.get(name)
            shape = param.shape if index is None else (len(index), *param.shape[1:])
            if name in self.shards:
                shape = (self.shards[name].counts[self.shards[name].rank], *param.shape[1:])
            # one buffer for the whole run: copy_ into it, never allocate per step
            self._grads[name] = torch.zeros(shape, dtype=param.dtype, device=param.device)
        # every trainable parameter once (tied ones are one): the global norm is over them
        self._trainable = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
        #: the trainable parameters whose gradients are split across processes (norms add up)
        self._split = {id(p) for p in self._trainable if is_dtensor(p)}
        self._collect_queued = False
        self._handles = [
            p.register_post_accumulate_grad_hook(self._grad_hook) for p in self._trainable
        ]

    def _grad_hook(self, param: torch.Tensor) -> None:
        """At a backward's first gradient, arrange for :meth:`_collect` to run at its end,
        after every callback queued meanwhile. Under DistributedDataParallel the gradients
        are averaged across processes by such a callback, so the ones collected are the
        averaged gradients the optimizer is given (before any clipping, which comes after
        backward)."""
        if not self._collect_queued:
            self._collect_queued = True
            _queue_at_backward_end(lambda: _queue_at_backward_end(self._collect))

    def _collect(self) -> None:
        """Copy the recorded parameters' gradients and note every gradient's norm. With
        accumulation, the last backward's collection holds the sum of the micro-batches.

        Each collection replaces the last one whole: a backward whose optimizer step never
        came (a grad scaler skipped it on an inf) leaves nothing behind for the next step.
        """
        self._collect_queued = False
        grads = {id(p): p.grad for p in self._trainable if p.grad is not None}
        # as scaler.unscale_ does: grad * (1 / scale); a power of two, so the global norm
        # of the scaled gradients times it is the unscaled one's (see _global_norm)
        inv_scale = 1.0 if self.scaler is None else 1.0 / float(self.scaler.get_scale())
        self._inv_scale = inv_scale
        # fp32 at least (bf16 grads), the grad's own dtype when wider (fp64)
        self._grad_sq_norms = {
            key: torch.linalg.vector_norm(
                local(g.detach()), dtype=torch.promote_types(g.dtype, torch.float32)
            )
            .float()
            .square()
            for key, g in grads.items()
        }
        self._grad_seen = set()
        for name, param in self.params.items():
            grad = grads.get(id(param))
            if grad is None:
                continue
            grad = grad.detach()
            index = self.rows.get(name)
            if index is None or name in self.shards:
                self._grads[name].copy_(self._recorded_rows(name, grad))
            else:
                torch.index_select(grad, 0, index.to(grad.device), out=self._grads[name])
            if self.scaler is not None:
                self._grads[name].mul_(inv_scale)
            self._grad_seen.add(name)

    def _recorded_rows(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of ``tensor`` (of parameter ``name``'s shape) that are recorded: the
        ``rows=`` chosen, and of a sharded parameter only those this process holds."""
        if name in self.shards:
            return self.shards[name].mine(tensor)
        index = self.rows.get(name)
        return tensor if index is None else tensor.index_select(0, index.to(tensor.device))

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- per step -------------------------------------------------------------------------

    def begin_step(self) -> None:
        """Forget the last step's gradients: a step starts accumulating afresh."""
        self._grad_sq_norms.clear()
        self._grad_seen.clear()

    def note_learning_rates(self, optimizer: Any) -> None:
        """Keep the learning rates the coming optimizer step uses (call just before it)."""
        self._lrs = {
            name: _learning_rate(_group_of(inner_optimizer(optimizer), p))
            for name, p in self.params.items()
        }

    def can_record_initial(self, optimizer: Any) -> bool:
        """Whether the state before the first update is known. By name, an optimizer other
        than Adam/AdamW that holds no state yet may create any tensors at its first step,
        and a recording's fields are fixed by its first step: its initial step is skipped."""
        if self.notebook or is_adam(optimizer):
            return True
        inner = inner_optimizer(optimizer)
        if all(inner.state.get(p) for p in self.params.values()):
            return True
        warnings.warn(
            f"wordybird: {type(inner).__name__} holds no state before its first step, so "
            "which tensors it will hold is unknown; the initial step is not recorded",
            stacklevel=3,
        )
        return False

    @property
    def main(self) -> bool:
        """Whether this process records: with sharded parameters only the main one, which
        the others send their rows to; without, whichever holds the taps."""
        return all(shard.main for shard in self.shards.values())

    def fields(
        self, step: int, optimizer: Any, *, initial: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """The step's fields, read now, as (per-parameter fields, whole-step fields): the
        parameters after the optimizer step with their state, the gradients and learning
        rates noted during the step, and the global gradient norm. ``initial``: the state
        before training (no gradient yet: zero; the learning rate the first step will use).
        With sharded parameters every process calls it for the same steps: the main one
        gets the whole tensors, the others send their rows and get None.
        """
        inner = inner_optimizer(optimizer)
        if self._state_keys is None:
            self._state_keys = self._choose_state_keys(inner)
        if initial:
            self.note_learning_rates(inner)
        out: dict[str, torch.Tensor] = {}
        step_fields: dict[str, torch.Tensor] = {}
        gathered: dict[str, ShardedRows] = {}  # field -> its parameter's shards
        for name, param in self.params.items():
            index = self.rows.get(name)
            value = self._recorded_rows(name, param.detach())
            grad = self._grads[name]
            if initial or name not in self._grad_seen:  # the loss did not depend on it
                grad.zero_()
            state = {
                field: self._state(inner, name, key, step)
                for field, key in self._state_keys[name].items()
            }
            lr = torch.tensor(self._lrs[name], dtype=torch.float32)
            if self.notebook:
                out.update({"embeddings": value, "grads": grad, **state})
                step_fields["learning_rates"] = lr
            else:
                out.update({f"{name}/value": value, f"{name}/grad": grad, **state})
                out[f"{name}/lr"] = lr
                if index is not None:
                    out[f"{name}/rows"] = index
            if name in self.shards:
                whole = (
                    ("embeddings", "grads") if self.notebook else (f"{name}/value", f"{name}/grad")
                )
                rowed = [*whole, *(field for field, tensor in state.items() if tensor.dim())]
                gathered.update(dict.fromkeys(rowed, self.shards[name]))
        for field, shards in gathered.items():  # the same order on every process
            out[field] = shards.gather(field, out[field])
        step_fields["grad_norms"] = torch.tensor(0.0) if initial else self._global_norm()
        if not self.main:
            return None
        if self.store_dtype is not None:
            out = {n: t.to(self.store_dtype) if n in self._narrowed else t for n, t in out.items()}
        return out, step_fields

    def _global_norm(self) -> torch.Tensor:
        """The pre-clip norm over every trainable parameter's whole gradient: the squares of
        sharded ones summed over the processes (all take part), the others' as they are."""
        norms = [n for key, n in self._grad_sq_norms.items() if key not in self._split]
        if self._split:
            split = [n for key, n in self._grad_sq_norms.items() if key in self._split]
            norms.append(sum_over_processes(split))
        return torch.stack(norms).sum().sqrt() * self._inv_scale if norms else torch.tensor(0.0)

    def field_names(self, name: str) -> dict[str, str]:
        """Parameter ``name``'s fields by role (after the first :meth:`fields`): ``value``,
        ``grad``, ``lr`` and one per optimizer state key (``exp_avg``, ``momentum_buffer``…)."""
        state = {key: field for field, key in self._state_keys[name].items()}
        if self.notebook:
            return {"value": "embeddings", "grad": "grads", "lr": "learning_rates", **state}
        return {"value": f"{name}/value", "grad": f"{name}/grad", "lr": f"{name}/lr", **state}

    def metadata(self) -> dict[str, Any]:
        """What a reader needs to know about these fields (after the first :meth:`fields`):
        the optimizer's hyperparameters, and which fields ``store_dtype`` narrowed."""
        entries: dict[str, Any] = {}
        if self.store_dtype is not None:
            entries["store_dtype"] = {
                "dtype": str(self.store_dtype).removeprefix("torch."),
                "fields": sorted(self._narrowed),
                "note": "converted from the parameters' own dtype at record time (lossy "
                "when narrower)",
            }
        return entries

    # -- optimizer state ------------------------------------------------------------------

    def _choose_state_keys(self, inner: Any) -> dict[str, dict[str, str]]:
        """Which state tensors each parameter's fields hold, fixed at the first record."""
        chosen: dict[str, dict[str, str]] = {}
        for name, param in self.params.items():
            state = inner.state.get(param, {})
            if self.notebook:
                if is_adam(inner) or all(k in state for k in NOTEBOOK_STATE.values()):
                    chosen[name] = dict(NOTEBOOK_STATE)
                else:
                    warnings.warn(
                        f"wordybird: the optimizer ({type(inner).__name__}) holds no Adam "
                        "exp_avg/exp_avg_sq for the recorded parameter; the recording has "
                        "no momentum/variance fields",
                        stacklevel=4,
                    )
                    chosen[name] = {}
                self._narrowed |= {"embeddings", "grads", *chosen[name]}
                continue
            keys = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim()]
            scalars = [k for k, v in state.items() if isinstance(v, torch.Tensor) and not v.dim()]
            if not state and is_adam(inner):
                keys = [k for k in _adam_keys(inner, param) if k != "step"]
                scalars = ["step"]
            if not keys and not scalars:
                warnings.warn(
                    f"wordybird: {type(inner).__name__} holds no state for {name}; its "
                    "recording has no optimizer-state fields",
                    stacklevel=4,
                )
            chosen[name] = {f"{name}/{key}": key for key in scalars + keys}
            self._narrowed |= {f"{name}/value", f"{name}/grad", *(f"{name}/{k}" for k in keys)}
        return chosen

    def _state(self, inner: Any, name: str, key: str, step: int) -> torch.Tensor:
        param = self.params[name]
        state = inner.state.get(param, {})
        value = state.get(key)
        if value is None:
            if not (is_adam(inner) and not state and key in ADAM_ZERO_STATE):
                raise WordybirdError(
                    f"step {step}: the optimizer no longer holds {key!r} for {name}, which "
                    "earlier steps recorded"
                )
            # Adam's state before the parameter's first update: zero by definition
            value = (
                torch.zeros((), dtype=torch.float32) if key == "step" else torch.zeros_like(param)
            )
        value = value.detach()
        sharded_like_it = is_dtensor(value) and value.shape == param.shape
        if name in self.shards and value.dim() and not sharded_like_it:  # its rows: unknown
            raise WordybirdError(
                f"{type(inner).__name__}'s {key!r} for the sharded {name} is not a DTensor "
                f"of its shape (shape {tuple(value.shape)}); {SUPPORTED}, with optimizer "
                "state of the parameter's shape or scalars"
            )
        if value.shape == param.shape:  # a DTensor's shape is the whole tensor's
            value = self._recorded_rows(name, value)
        return value


def _queue_at_backward_end(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the running backward pass ends (autograd's final callbacks,
    run in the order queued; one queued by another runs after all queued before it)."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)
