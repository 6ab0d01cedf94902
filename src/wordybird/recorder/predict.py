"""Predictive mode's predictor: an optimizer's tensors at a step, as its update rule gives them.

A parameter and Adam's or SGD's state after step ``t`` follow from their values after step
``t - 1`` and this step's gradient, gradient norm and learning rate. Predictive mode stores
only each value's ULP difference from its prediction (``delta.py``), which is zero for most
values. The prediction runs at write time and again at read time, on the very same inputs
(the stored, decoded fields), so it must give the same bits on every machine: it is plain
elementwise numpy arithmetic (``+ - * /`` and ``sqrt`` in float32, correctly rounded by
IEEE 754, never fused, no reductions), Python floats for the scalars (powers by repeated
squaring, not ``pow``), and rounding to the field's dtype by numpy's round-to-nearest-even
casts. It follows torch's own operation order (``torch.optim.adam._single_tensor_adam``,
``sgd``, ``clip_grad_norm_``) where it can, which only makes the residuals smaller:
correctness never depends on matching torch. FORMAT.md ("Predictive mode") specifies it;
:data:`PREDICTOR_VERSION` changes with any change to its arithmetic.
"""

from __future__ import annotations

import math
import os
import queue
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wordybird.errors import WordybirdError
from wordybird.knobs import PREDICT_BLOCK

#: Stored with every prediction; a reader refuses one it does not implement (the arithmetic
#: must be exactly the writer's).
PREDICTOR_VERSION = 1

#: The same-step fields (roles) each rule reads, besides the field's own previous step.
RULE_INPUTS: dict[str, tuple[str, ...]] = {
    "adam_exp_avg": ("grad", "grad_norm"),
    "adam_exp_avg_sq": ("grad", "grad_norm"),
    "adam_param": ("exp_avg", "exp_avg_sq", "lr"),
    "sgd_momentum_buffer": ("grad", "grad_norm"),
    "sgd_param": ("grad", "grad_norm", "momentum_buffer", "lr"),
}
#: ``clip_grad_norm_``'s guard against a zero norm.
CLIP_EPS = 1e-6
_F32 = np.float32


@dataclass(frozen=True)
class Prediction:
    """How one field's step is predicted: the rule, the fields it reads and its constants.

    ``inputs`` maps a role of :data:`RULE_INPUTS` to the recorded field that holds it at
    the same step (``grad_norm`` may be absent when ``max_grad_norm`` is None: no clipping).
    ``constants``: the optimizer's hyperparameters (``beta1``, ``beta2``, ``eps``,
    ``weight_decay``, ``momentum``, ``dampening``, ``nesterov``, ``maximize``), the clip
    norm ``max_grad_norm`` (None: none) and ``step_offset``, the optimizer's step count
    minus the recorded step number (Adam's bias corrections need the count).
    """

    rule: str
    inputs: Mapping[str, str]
    constants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULE_INPUTS:
            raise WordybirdError(
                f"unknown prediction rule {self.rule!r}; this wordybird knows {sorted(RULE_INPUTS)}"
            )
        needed = set(RULE_INPUTS[self.rule]) - set(self.inputs)
        if self.constants.get("max_grad_norm") is None:
            needed.discard("grad_norm")
        if self.rule == "sgd_param" and not self.constants.get("momentum"):
            needed.discard("momentum_buffer")
        if (
            self.rule == "sgd_param"
            and self.constants.get("momentum")
            and not self.constants.get("nesterov")
        ):
            needed -= {"grad", "grad_norm"}  # the buffer already holds this step's gradient
        if needed:
            raise WordybirdError(
                f"prediction rule {self.rule!r} needs the field(s) for {sorted(needed)}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "predictor_version": PREDICTOR_VERSION,
            "rule": self.rule,
            "inputs": dict(self.inputs),
            "constants": dict(self.constants),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prediction:
        version = data.get("predictor_version")
        if version != PREDICTOR_VERSION:
            raise WordybirdError(
                f"the recording's predictions use predictor version {version}; this wordybird "
                f"implements version {PREDICTOR_VERSION} (upgrade wordybird to read it)"
            )
        return cls(str(data["rule"]), dict(data["inputs"]), dict(data.get("constants", {})))

    def optimizer_step(self, step: int) -> int:
        """The optimizer's step count after the recorded step ``step``."""
        return step + int(self.constants.get("step_offset", 0))


def predict(
    prediction: Prediction,
    previous: np.ndarray,
    inputs: Mapping[str, np.ndarray],
    step: int,
    *,
    parallel: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The field's predicted values at recorded step ``step`` (in ``previous``'s dtype),
    from its values at ``step - 1`` and the same-step ``inputs`` (by role); with
    ``parallel``, its blocks on a small thread pool, else all in the calling thread.
    ``out`` (of ``previous``' shape and dtype) receives them, if given."""
    flat = previous.reshape(-1)
    tensors = {role: np.asarray(value) for role, value in inputs.items()}
    tensors = {role: v.reshape(-1) if v.ndim else v for role, v in tensors.items()}
    out = np.empty_like(flat) if out is None else out.reshape(-1)
    canonical_nan = np.array(np.nan, dtype=flat.dtype)
    block_size = max(1, min(PREDICT_BLOCK, flat.size))
    arenas: queue.SimpleQueue[_Arena] = queue.SimpleQueue()  # one per thread at work

    def run(start: int) -> None:
        _check_subnormals()  # in the thread that computes
        part = slice(start, start + PREDICT_BLOCK)
        try:
            arena = arenas.get_nowait()
        except queue.Empty:
            arena = _Arena(block_size)
        try:
            arena.reset()
            size = flat[part].size
            block = {role: _Block(v[part], arena) if v.ndim else v for role, v in tensors.items()}
            with np.errstate(all="ignore"):  # an inf or NaN prediction is only a poor one
                values = _predict_block(prediction, _Block(flat[part], arena), block, step)
            # a NaN's sign and payload differ between CPUs and code paths: one NaN for all
            nan = arena.take(np.dtype(bool), size)
            np.isnan(values.values, out=nan)
            np.copyto(out[part], values.values)
            np.copyto(out[part], canonical_nan, where=nan)
        finally:
            arenas.put(arena)

    starts = range(0, flat.size, PREDICT_BLOCK)
    if parallel and len(starts) > 1:
        list(_pool().map(run, starts))  # numpy releases the GIL: blocks run in parallel
    else:
        for start in starts:
            run(start)
    return out.reshape(previous.shape)


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """Threads for the blocks, made anew in a forked child (the parent's do not exist there)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        workers = min(4, os.cpu_count() or 1)
        _POOL = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="wordybird-predict"))
    return _POOL[1]


def _check_subnormals() -> None:
    """Refuse to predict in a thread that flushes subnormal floats to zero (FTZ/DAZ, as
    ``torch.set_flush_denormal(True)`` sets): its arithmetic differs from IEEE 754's, so a
    prediction made there could not be made again elsewhere, and a step stored from it
    would not decode."""
    tiny = np.array([1e-39], dtype=_F32)
    if not (tiny * _F32(0.5))[0] > 0:
        raise WordybirdError(
            "predictive mode needs IEEE subnormal arithmetic, but this thread flushes "
            "subnormals to zero (torch.set_flush_denormal(True)?); record in another mode "
            "or turn flushing off"
        )


def _predict_block(
    prediction: Prediction,
    previous: _Block,
    inputs: Mapping[str, Values],
    step: int,
) -> _Block:
    dtype = previous.dtype
    c = prediction.constants
    if prediction.rule == "adam_exp_avg":
        w = _F32(1.0 - c["beta1"])
        m = _wide(previous)
        return _round(m + w * (_clipped_grad(prediction, inputs) - m), dtype)
    if prediction.rule == "adam_exp_avg_sq":
        g = _clipped_grad(prediction, inputs)
        decayed = _wide(_round(_wide(previous) * _F32(c["beta2"]), dtype))
        return _round(decayed + _F32(1.0 - c["beta2"]) * g * g, dtype)
    if prediction.rule == "adam_param":
        return _adam_param(prediction, previous, inputs, step)
    if prediction.rule == "sgd_momentum_buffer":
        g = _clipped_grad(prediction, inputs)
        if prediction.optimizer_step(step) <= 1:  # torch: the first buffer is the grad
            return _round(g, dtype)
        decayed = _wide(_round(_wide(previous) * _F32(c["momentum"]), dtype))
        return _round(decayed + _F32(1.0 - c.get("dampening", 0.0)) * g, dtype)
    return _sgd_param(prediction, previous, inputs)


def _adam_param(
    prediction: Prediction, previous: _Block, inputs: Mapping[str, Values], step: int
) -> _Block:
    """Adam/AdamW's parameter update, in torch's single-tensor order: decoupled decay, then
    ``p += -(lr / bc1) * m / ((sqrt(v) / sqrt(bc2)) + eps)``, each op rounded to the dtype."""
    c, dtype = prediction.constants, previous.dtype
    t = max(1, prediction.optimizer_step(step))
    lr = float(inputs["lr"])
    p = _wide(previous)
    if c.get("weight_decay"):
        p = _wide(_round(p * _F32(1.0 - lr * c["weight_decay"]), dtype))
    step_size = _F32(-(lr / (1.0 - _power(c["beta1"], t))))
    bc2_sqrt = _F32(math.sqrt(1.0 - _power(c["beta2"], t)))
    root = _wide(_round(_wide(inputs["exp_avg_sq"]).sqrt(), dtype))
    denom = _wide(_round(_wide(_round(root / bc2_sqrt, dtype)) + _F32(c["eps"]), dtype))
    return _round(p + step_size * (_wide(inputs["exp_avg"]) / denom), dtype)


def _sgd_param(prediction: Prediction, previous: _Block, inputs: Mapping[str, Values]) -> _Block:
    """SGD's ``p += -lr * d`` with ``d`` the buffer, or ``g + momentum · buffer`` (Nesterov),
    or the gradient itself without momentum."""
    c, dtype = prediction.constants, previous.dtype
    if not c.get("momentum"):
        direction = _clipped_grad(prediction, inputs)
    elif c.get("nesterov"):
        g = _clipped_grad(prediction, inputs)
        direction = _wide(_round(g + _F32(c["momentum"]) * _wide(inputs["momentum_buffer"]), dtype))
    else:
        direction = _wide(inputs["momentum_buffer"])
    return _round(_wide(previous) + _F32(-float(inputs["lr"])) * direction, dtype)


def _clipped_grad(prediction: Prediction, inputs: Mapping[str, Values]) -> _Block:
    """The gradient the optimizer was given: clipped as ``clip_grad_norm_`` does (its
    coefficient computed and applied in the gradient's dtype), negated with ``maximize``."""
    grad = inputs["grad"]
    g = _wide(grad)
    max_norm = prediction.constants.get("max_grad_norm")
    if max_norm is not None:
        norm = _wide(_round(np.asarray(inputs["grad_norm"], dtype=_F32), grad.dtype))
        coef = _wide(_round(_F32(max_norm) / (norm + _F32(CLIP_EPS)), grad.dtype))
        if coef < 1:
            g = _wide(_round(g * coef, grad.dtype))
    return -g if prediction.constants.get("maximize") else g


class _Arena:
    """Work arrays for one block's arithmetic, reused by every block one thread computes in
    one :func:`predict` call.

    Each operation takes the next array (``take``) and ``reset`` starts a block again at the
    first, so a block's operations get the same arrays, in the same order, as the block
    before: nothing is allocated after the first block. Fresh numpy temporaries for every
    block cost more than the arithmetic: the allocator hands them back to the kernel between
    blocks and every page faults in again (measured in benchmarks/README.md, "The writer").
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._arrays: list[np.ndarray] = []
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def take(self, dtype: np.dtype, size: int) -> np.ndarray:
        """The next work array, of ``dtype`` and ``size`` elements (at most the arena's)."""
        if self._next == len(self._arrays):
            self._arrays.append(np.empty(self._size, dtype))
        elif self._arrays[self._next].dtype != dtype:  # the same rule takes the same dtypes
            self._arrays[self._next] = np.empty(self._size, dtype)
        array = self._arrays[self._next]
        self._next += 1
        return array[:size]


def _operators(ufunc: np.ufunc) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A :class:`_Block`'s binary operator for ``ufunc`` and its reflection (a scalar on the
    left), each keeping the operands in the order the expression wrote them."""

    def forward(self: _Block, other: Any) -> _Block:
        return self._apply(ufunc, self, other)

    def reflected(self: _Block, other: Any) -> _Block:
        return self._apply(ufunc, other, self)

    return forward, reflected


class _Block:
    """A block of an array whose arithmetic writes into an :class:`_Arena`: every operation
    is the one numpy would run on the bare arrays (its result type by numpy's own promotion,
    ``np.result_type``), only into a reused array instead of a fresh one, so the bits are
    numpy's. Operands are never changed in place: a result lives until its block ends."""

    __array_ufunc__ = None  # numpy scalars defer to our reflected operators
    __slots__ = ("_arena", "values")

    def __init__(self, values: np.ndarray, arena: _Arena) -> None:
        self.values = values
        self._arena = arena

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def cast(self, dtype: np.dtype) -> _Block:
        """These values in ``dtype`` (numpy's cast, as ``astype``; itself if already so)."""
        if self.values.dtype == dtype:
            return self
        out = self._arena.take(dtype, self.values.size)
        np.copyto(out, self.values, casting="unsafe")
        return _Block(out, self._arena)

    def _apply(self, ufunc: np.ufunc, *operands: Any) -> _Block:
        bare = [x.values if isinstance(x, _Block) else x for x in operands]
        out = self._arena.take(np.result_type(*bare), self.values.size)
        ufunc(*bare, out=out)
        return _Block(out, self._arena)

    def sqrt(self) -> _Block:
        return self._apply(np.sqrt, self)

    def __neg__(self) -> _Block:
        return self._apply(np.negative, self)

    __add__, __radd__ = _operators(np.add)
    __sub__, __rsub__ = _operators(np.subtract)
    __mul__, __rmul__ = _operators(np.multiply)
    __truediv__, __rtruediv__ = _operators(np.true_divide)


Values = _Block | np.ndarray  # a block of a field, or a scalar (a 0-d array)


def _wide(values: Values) -> Values:
    """Values in the arithmetic's precision: float32 (torch's opmath for bf16/fp16), or
    float64 for float64 fields."""
    if isinstance(values, _Block):
        return values.cast(np.dtype(np.float64 if values.dtype == np.float64 else _F32))
    values = np.asarray(values)
    return values.astype(np.float64 if values.dtype == np.float64 else _F32)


def _round(values: Values, dtype: np.dtype) -> Values:
    """Round to the field's dtype (to nearest, ties to even)."""
    if isinstance(values, _Block):
        return values.cast(np.dtype(dtype))
    return np.asarray(values).astype(dtype)


def _power(base: float, exponent: int) -> float:
    """``base ** exponent`` by repeated squaring: IEEE multiplications only, the same bits on
    every machine (``pow`` in a C library need not be correctly rounded)."""
    result, factor = 1.0, float(base)
    while exponent:
        if exponent & 1:
            result *= factor
        factor *= factor
        exponent >>= 1
    return result
