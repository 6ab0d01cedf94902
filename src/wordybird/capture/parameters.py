"""Choosing what to record: parameters by name, glob or predicate, and rows of them."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from wordybird.errors import WordybirdError

#: A parameter's name in ``model.named_parameters()``, a glob pattern of such names
#: (``"*.ln_f.*"``), or a predicate on (name, parameter).
ParameterChoice = str | Callable[[str, nn.Parameter], bool]
#: Rows of a parameter to record: their indices, or a boolean mask over the first axis.
Rows = Sequence[int] | np.ndarray | torch.Tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The real model inside DataParallel/DDP (``.module``) or ``torch.compile``
    (``._orig_mod``): parameter names are the real model's."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def select_parameters(
    model: nn.Module, choices: ParameterChoice | Iterable[ParameterChoice]
) -> dict[str, nn.Parameter]:
    """The parameters ``choices`` name, each once: in the order of the choices, and the
    matches of one pattern or predicate in the model's order.

    Tied parameters are found under every name they have (GPT-2's ``lm_head.weight`` is
    ``transformer.wte.weight``) and recorded once, under the first name chosen. A name or
    pattern that matches nothing is an error listing the closest names.
    """
    if isinstance(choices, str) or callable(choices):
        choices = [choices]
    named = list(unwrap(model).named_parameters(remove_duplicate=False))
    names = [name for name, _ in named]
    chosen: dict[str, nn.Parameter] = {}
    for choice in choices:
        if callable(choice):
            matches = [(n, p) for n, p in named if choice(n, p)]
            what = f"the predicate {getattr(choice, '__name__', choice)!r}"
        elif isinstance(choice, str):
            matches = [(n, p) for n, p in named if fnmatch.fnmatchcase(n, choice)]
            what = repr(choice)
        else:
            raise WordybirdError(
                f"parameters: expected names, glob patterns or a predicate, got {choice!r}"
            )
        if not matches:
            close = difflib.get_close_matches(str(choice), names, n=5, cutoff=0.4)
            hint = f"; close: {', '.join(close)}" if close else f"; it has {len(names)} others"
            raise WordybirdError(f"the model has no parameter matching {what}{hint}")
        for name, param in matches:
            if all(param is not p for p in chosen.values()):
                chosen[name] = param
    return chosen


def row_indices(rows: Rows, parameter_name: str, parameter: torch.Tensor) -> torch.Tensor:
    """``rows`` as sorted, unique int64 indices into the parameter's first axis."""
    if parameter.dim() == 0:
        raise WordybirdError(f"rows=: {parameter_name} is a scalar; it has no rows")
    count = parameter.shape[0]
    index = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows)
    if index.dtype == torch.bool:
        if index.shape != (count,):
            raise WordybirdError(
                f"rows=: a mask for {parameter_name} needs shape ({count},), got "
                f"{tuple(index.shape)}"
            )
        index = index.nonzero().flatten()
    if index.numel() == 0:
        raise WordybirdError(f"rows=: no rows of {parameter_name} chosen")
    if index.dim() != 1 or index.is_floating_point() or index.is_complex():
        raise WordybirdError(f"rows=: give integer indices or a boolean mask, got {rows!r}")
    index = torch.unique(index.to(torch.int64).cpu())  # sorted
    if index[0] < 0 or index[-1] >= count:
        raise WordybirdError(
            f"rows=: {parameter_name} has rows 0..{count - 1}; got indices "
            f"{int(index[0])}..{int(index[-1])}"
        )
    return index


def rows_by_name(
    params: Mapping[str, nn.Parameter], rows: Rows | Mapping[str, Rows] | None
) -> dict[str, torch.Tensor]:
    """``rows=`` as indices per parameter name (one choice for all, or a mapping)."""
    if rows is None:
        return {}
    if isinstance(rows, Mapping):
        unknown = sorted(set(rows) - set(params))
        if unknown:
            raise WordybirdError(
                f"rows= names {', '.join(unknown)}, which are not recorded parameters "
                f"({', '.join(params)})"
            )
        return {name: row_indices(r, name, params[name]) for name, r in rows.items()}
    return {name: row_indices(rows, name, p) for name, p in params.items()}
