"""The update rules of the recorded fields: which optimizer update predicts each one.

Predictive mode stores each predicted field as its difference from the rule's prediction
(``wordybird.recorder.predict``), and the analysis replays the parameters' rules to tell a
rounding freeze from others, in every mode (the rules go into the run metadata). What a
rule needs, the optimizer's hyperparameters, the clip norm and the optimizer's step count,
is known only here, where the optimizer is. A field whose update rule is not known here
(another optimizer, or Adam/SGD with a setting the rules leave out) has none; predictive
mode stores it as in compact mode, which is said once.
"""

from __future__ import annotations

from typing import Any

import torch

from wordybird.capture.taps import Taps, _group_of, inner_optimizer, is_adam
from wordybird.recorder.predict import Prediction

#: The global gradient-norm field (``Taps.fields``'s whole-step field).
GRAD_NORM_FIELD = "grad_norms"


def predictions_for(
    taps: Taps, optimizer: Any, step: int, max_grad_norm: float | None
) -> tuple[dict[str, Prediction], list[str]]:
    """The predictions of ``taps``' fields, fixed at the recording's first step ``step``,
    and the parameter and state fields whose update rule is not known here.

    Args:
        taps: the taps, after their first ``fields()`` (which fixes the state fields).
        optimizer: the (possibly wrapped) optimizer.
        step: the step number the first recorded step has.
        max_grad_norm: the norm the loop clips the gradients to before the optimizer step
            (the Trainer's ``max_grad_norm``); None when it does not clip.
    """
    inner = inner_optimizer(optimizer)
    predictions: dict[str, Prediction] = {}
    unpredicted: list[str] = []
    for name, param in taps.params.items():
        fields = taps.field_names(name)
        if is_adam(inner):
            found = _adam(inner, param, fields, step, max_grad_norm)
        elif isinstance(inner, torch.optim.SGD):
            found = _sgd(_group_of(inner, param), fields, max_grad_norm)
        else:
            found = {}
        predictions.update(found)
        unpredicted += [
            field
            for role, field in fields.items()
            if role not in ("grad", "lr", "step") and field not in found
        ]
    return predictions, unpredicted


def _adam(
    inner: Any,
    param: torch.Tensor,
    fields: dict[str, str],
    step: int,
    max_grad_norm: float | None,
) -> dict[str, Prediction]:
    group = _group_of(inner, param)
    decoupled = isinstance(inner, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))
    if group.get("weight_decay") and not decoupled:
        return {}  # Adam's coupled decay feeds the parameter into the moments
    beta1, beta2 = (float(b) for b in group["betas"])
    count = inner.state.get(param, {}).get("step")
    common = {"max_grad_norm": max_grad_norm, "maximize": bool(group.get("maximize"))}
    # the optimizer's step count at the first recorded step: 0 before its first update
    offset = (0 if count is None else int(float(count))) - step
    grad = {"grad": fields["grad"], **_norm(max_grad_norm)}
    found = {}
    if "exp_avg" in fields:
        found[fields["exp_avg"]] = Prediction(
            "adam_exp_avg", grad, {**common, "beta1": beta1, "step_offset": offset}
        )
    if "exp_avg_sq" in fields:
        found[fields["exp_avg_sq"]] = Prediction(
            "adam_exp_avg_sq", grad, {**common, "beta2": beta2, "step_offset": offset}
        )
    if "exp_avg" in fields and "exp_avg_sq" in fields and not group.get("amsgrad"):
        found[fields["value"]] = Prediction(
            "adam_param",
            {"exp_avg": fields["exp_avg"], "exp_avg_sq": fields["exp_avg_sq"], "lr": fields["lr"]},
            {
                "beta1": beta1,
                "beta2": beta2,
                "eps": float(group["eps"]),
                "weight_decay": float(group["weight_decay"]),
                "step_offset": offset,
            },
        )
    return found


def _sgd(
    group: dict[str, Any], fields: dict[str, str], max_grad_norm: float | None
) -> dict[str, Prediction]:
    if group.get("weight_decay"):
        return {}  # the decay feeds the parameter into the buffer
    momentum = float(group.get("momentum", 0.0))
    constants = {
        "max_grad_norm": max_grad_norm,
        "maximize": bool(group.get("maximize")),
        "momentum": momentum,
        "dampening": float(group.get("dampening", 0.0)),
        "nesterov": bool(group.get("nesterov")),
        "step_offset": 0,  # SGD keeps no count: the recorded step number is taken as it
    }
    grad = {"grad": fields["grad"], **_norm(max_grad_norm)}
    found = {}
    if momentum and "momentum_buffer" not in fields:
        return {}
    if momentum:
        found[fields["momentum_buffer"]] = Prediction("sgd_momentum_buffer", grad, constants)
        grad = {**grad, "momentum_buffer": fields["momentum_buffer"]}
        if not constants["nesterov"]:
            grad = {"momentum_buffer": fields["momentum_buffer"]}
    found[fields["value"]] = Prediction("sgd_param", {**grad, "lr": fields["lr"]}, constants)
    return found


def _norm(max_grad_norm: float | None) -> dict[str, str]:
    return {} if max_grad_norm is None else {"grad_norm": GRAD_NORM_FIELD}
