"""The freeze analysis of a recording by name: each parameter's moves, predicted moves, verdict.

Recordings made by ``watch`` or ``RecorderCallback(parameters=...)`` hold, per parameter
``P``, ``P/value`` (after the step), ``P/grad``, the optimizer's state ``P/<key>`` and
``P/lr`` (``capture/taps.py``), and the global ``grad_norms``. For every recorded floating
parameter and every recorded step this measures:

- **observed**: the fraction of coordinates whose value changed since the previous recorded
  step, those hops' sizes in ULPs (mean, max), ``‖W − W_prev‖``, ``‖W − W_first‖`` and the
  update-to-weight RMS ratio ``‖W − W_prev‖ / ‖W_prev‖``;
- **predicted**, where the parameter's update rule is known (``predicted.py``): the
  fraction expected to move and the agreement with the observed moves per coordinate
  (every coordinate), and the unrounded update's size in ULPs (mean, median) and its RMS
  ratio, on a fixed sample of up to 65,536 evenly spaced coordinates (every one of a
  smaller parameter; the live monitor follows the same sample): sizes need no more, and
  the float64 replay they take costs twice the rounded one;
- the learning rate, the parameter's gradient norm (and the global one) and whether its
  gradient is zero; the live monitor's sampled moving fraction where it was recorded;

and then the verdict (``freeze.py``): frozen from which step, why, and the remedy.

The rule comes from the store's header (a predictive store's ``prediction`` of the field),
else from the run metadata's ``predictions`` (which ``watch`` and ``RecorderCallback``
write in every mode, and exports keep). A parameter with neither, whose optimizer has no
known rule, or whose values were narrowed at record time (``store_dtype``), is analysed
observed only, and its verdict says why.

Out of core: one parameter at a time, and of it only its first, previous and current step
and the current step's inputs to the rule; elementwise work runs in blocks of
:data:`BLOCK` elements, so wide temporaries stay a few MB whatever the parameter's size.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wordybird.analysis.freeze import (
    DEFAULT_THRESHOLD,
    StepEvidence,
    Verdict,
    check_threshold,
    no_rule,
    verdict,
)
from wordybird.analysis.lattice import is_lattice_dtype, ulp_distance, wide_dtype
from wordybird.analysis.predicted import (
    PARAMETER_RULES,
    predicted_moves,
    predicted_update,
    sample_indices,
)
from wordybird.errors import WordybirdError
from wordybird.recorder.predict import Prediction
from wordybird.recording import Recording

#: Elements per block of elementwise work (the predictor's own block size: 1 MiB of float32).
BLOCK = 1 << 18
#: The suffix of a parameter's value field; the other fields of a parameter by role.
VALUE, GRAD, LR, MOVED = "value", "grad", "lr", "moved"
#: The global pre-clip gradient norm field.
GRAD_NORMS = "grad_norms"

#: Every record's keys, in the order the CSV lists them.
COLUMNS: tuple[str, ...] = (
    "step",
    "learning_rate",
    "grad_norm",
    "global_grad_norm",
    "gradient_zero",
    "hop_fraction",
    "hop_ulps_mean",
    "hop_ulps_max",
    "displacement_prev",
    "displacement_first",
    "update_to_weight_rms",
    "predicted_hop_fraction",
    "agreement",
    "predicted_update_ulps_mean",
    "predicted_update_ulps_median",
    "predicted_update_to_weight_rms",
    "monitored_hop_fraction",
)


@dataclass
class ParameterAnalysis:
    """One parameter's per-step records (keys :data:`COLUMNS`), its verdict, and where its
    update rule came from (``prediction``) or why there is none (``no_prediction``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    records: list[dict[str, Any]]
    verdict: Verdict
    prediction: str | None
    no_prediction: str | None

    def series(self, key: str) -> np.ndarray:
        """A record column as float64, NaN where a value is missing (for plotting)."""
        return np.array(
            [math.nan if r[key] is None else r[key] for r in self.records], dtype=np.float64
        )

    def to_json(self) -> dict[str, Any]:
        """The parameter as plain JSON: one list per column (``steps`` for the step
        numbers), then the verdict."""
        columns = {
            ("steps" if key == "step" else key): [r[key] for r in self.records] for key in COLUMNS
        }
        v = self.verdict
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            **columns,
            "frozen_from_step": v.frozen_from_step,
            "cause": v.cause,
            "cause_reason": v.reason,
            "remedy": v.remedy,
            "lr_half": v.lr_half,
            "prediction": self.prediction,
            "no_prediction": self.no_prediction,
        }


@dataclass
class ParametersAnalysis:
    """A recording's per-parameter analyses (in recording order) and its summary."""

    label: str
    path: Path | str
    parameters: dict[str, ParameterAnalysis]
    summary: dict[str, Any] = field(default_factory=dict)

    def frozen(self) -> list[ParameterAnalysis]:
        """The frozen parameters, the earliest freeze first."""
        frozen = [p for p in self.parameters.values() if p.verdict.frozen_from_step is not None]
        return sorted(frozen, key=lambda p: p.verdict.frozen_from_step or 0)


def recording_label(path: str | os.PathLike[str]) -> str:
    """A short name for plots: the run folder for ``<run>/recording.*``, else the file stem."""
    path = Path(path)
    return path.parent.name if path.stem == "recording" and path.parent.name else path.stem


def parameter_names(recording: Recording) -> list[str]:
    """The parameters a recording holds by name (a floating, non-empty ``<name>/value``
    field), in recording order."""
    suffix = f"/{VALUE}"
    return [
        f.removesuffix(suffix)
        for f in recording.fields
        if f.endswith(suffix)
        and is_lattice_dtype(recording.numpy_dtype(f))
        and math.prod(recording.step_shape(f)) > 0
    ]


def select_parameters(
    recording: Recording, names: Sequence[str], patterns: Sequence[str]
) -> list[str]:
    """The parameters among ``names`` that ``patterns`` (names or glob patterns) choose, in
    recording order; all of them without patterns. A pattern matching none is an error."""
    if not patterns:
        return list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        matches = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not matches:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.4)
            listed = ", ".join(names[:5]) + (
                f" and {len(names) - 5} more" if len(names) > 5 else ""
            )
            hint = f"close: {', '.join(close)}" if close else f"it records {listed}"
            raise WordybirdError(
                f"{recording.path} has no recorded parameter matching {pattern!r}; {hint}"
            )
        chosen |= matches
    return [n for n in names if n in chosen]


def analyze_parameters(
    recording: Recording,
    *,
    parameters: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    label: str | None = None,
    progress: bool = False,
) -> ParametersAnalysis:
    """Analyse the parameters ``parameters`` (names or glob patterns; default all) of a
    recording by name, one after another."""
    check_threshold(threshold)
    names = parameter_names(recording)
    if not names:
        raise WordybirdError(
            f"{recording.path} has no 'embeddings' field (it has {', '.join(recording.fields)}) "
            "and no floating parameter recorded by name (a '<name>/value' field): nothing to "
            "analyse"
        )
    steps = recording.steps
    if len(steps) < 2:
        raise WordybirdError(
            f"{recording.path} has {len(steps)} recorded step(s); hops need at least two"
        )
    chosen = select_parameters(recording, names, parameters)
    bar = tqdm(
        total=len(chosen) * len(steps),
        desc="analyze",
        unit="step",
        leave=False,
        disable=None if progress else True,
    )
    results: dict[str, ParameterAnalysis] = {}
    with bar:
        for name in chosen:
            results[name] = _Parameter(recording, name).analyze(threshold, bar.update)
            recording.forget_decoded()  # this parameter's chains: not needed for the next
    result = ParametersAnalysis(label or recording_label(recording.path), recording.path, results)
    frozen = result.frozen()
    result.summary = {
        "recording": str(recording.path),
        "format": recording.format,
        "label": result.label,
        "threshold": threshold,
        "recorded_steps": len(steps),
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "optimizer": _optimizer_class(recording.metadata),
        "parameters": len(results),
        "observed_only": [p.name for p in results.values() if p.no_prediction is not None],
        "frozen": [p.name for p in frozen],
    }
    return result


def _optimizer_class(metadata: Mapping[str, Any]) -> str | None:
    optimizer = metadata.get("optimizer")
    return optimizer.get("class") if isinstance(optimizer, dict) else None


class _Parameter:
    """One parameter's fields in a recording, and its analysis step by step."""

    def __init__(self, recording: Recording, name: str) -> None:
        self.recording = recording
        self.name = name
        self.value = f"{name}/{VALUE}"
        self.shape = recording.step_shape(self.value)
        self.dtype = recording.numpy_dtype(self.value)
        self.prediction, self.note = self._prediction()  # the rule and its source, or why none

    def _field(self, role: str) -> str | None:
        name = f"{self.name}/{role}"
        return name if name in self.recording.fields else None

    def _prediction(self) -> tuple[Prediction | None, str]:
        """The value's update rule and where it came from, or None and why there is none."""
        rec = self.recording
        metadata = rec.metadata
        narrowed = metadata.get("store_dtype")
        if isinstance(narrowed, dict) and self.value in narrowed.get("fields", ()):
            return None, (
                f"its values were recorded narrowed to {narrowed.get('dtype')} "
                "(store_dtype), while the optimizer updated a wider copy, which that lattice "
                "does not describe"
            )
        header = rec.field_prediction(self.value)
        in_metadata = metadata.get("predictions")
        if header is not None:
            data, source = header, "the store's header"
        elif isinstance(in_metadata, dict) and self.value in in_metadata:
            data, source = in_metadata[self.value], "the run metadata's predictions"
        elif isinstance(in_metadata, dict):
            return None, no_rule(_optimizer_class(metadata) or "its optimizer")
        else:
            return None, (
                "the recording holds no update rule for it (recorded by hand, or by a wordybird "
                "that did not write its predictions), so a freeze cannot be told to be rounding"
            )
        try:
            prediction = Prediction.from_json(data)
        except (WordybirdError, KeyError, TypeError, ValueError) as exc:
            return None, f"the update rule in {source} cannot be used: {exc}"
        if prediction.rule not in PARAMETER_RULES:
            return None, f"{source} predicts it by {prediction.rule!r}, not a parameter's rule"
        missing = sorted(f for f in prediction.inputs.values() if f not in rec.fields)
        if missing:
            return None, (
                f"its update rule reads {', '.join(missing)}, which the recording does not hold"
            )
        return prediction, f"{prediction.rule} from {source}"

    def _scalars(self, field: str | None) -> np.ndarray | None:
        """A scalar field at every position, as float64 (None when not recorded)."""
        if field is None or field not in self.recording.fields:
            return None
        if self.recording.step_shape(field) != ():
            return None
        values = self.recording.read_numpy(field, slice(0, len(self.recording.steps)))
        return values.astype(np.float64).reshape(-1)

    def analyze(self, threshold: float, advance: Any) -> ParameterAnalysis:
        rec = self.recording
        steps = rec.steps
        lrs = self._scalars(self._field(LR))
        norms = self._scalars(GRAD_NORMS)
        monitored = self._scalars(self._field(MOVED))
        grad = self._field(GRAD)
        records: list[dict[str, Any]] = []
        evidence: list[StepEvidence] = []
        first: np.ndarray | None = None
        prev: np.ndarray | None = None
        for position in range(len(steps)):
            step = int(steps[position])
            current = rec.read_numpy(self.value, position)
            record: dict[str, Any] = dict.fromkeys(COLUMNS)
            record["step"] = step
            record["learning_rate"] = _at(lrs, position)
            record["global_grad_norm"] = _at(norms, position)
            record["monitored_hop_fraction"] = _at(monitored, position)
            if grad is not None:
                norm, zero = _gradient(rec.read_numpy(grad, position))
                record["grad_norm"], record["gradient_zero"] = norm, zero
            if first is None or prev is None:
                first = current
            else:
                predictable = (
                    self.prediction is not None and steps[position] == steps[position - 1] + 1
                )
                inputs = self._inputs(position) if predictable else None
                record.update(_compare(current, prev, first, self.prediction, inputs, step))
            records.append(record)
            evidence.append(
                StepEvidence(
                    step,
                    record["hop_fraction"],
                    record["learning_rate"],
                    record["gradient_zero"],
                    record["predicted_hop_fraction"],
                    record["agreement"],
                    record["predicted_update_ulps_median"],
                )
            )
            prev = current
            advance(1)
        known = self.prediction is not None
        return ParameterAnalysis(
            self.name,
            str(self.dtype),
            self.shape,
            records,
            verdict(evidence, threshold, None if known else self.note),
            self.note if known else None,
            None if known else self.note,
        )

    def _inputs(self, position: int) -> dict[str, np.ndarray]:
        """The rule's inputs at ``position``, by role."""
        assert self.prediction is not None
        return {
            role: self.recording.read_numpy(field, position)
            for role, field in self.prediction.inputs.items()
        }


def _at(values: np.ndarray | None, position: int) -> float | None:
    return None if values is None else _finite(float(values[position]))


def _finite(value: float | None) -> float | None:
    """Non-finite numbers (NaN weights, an optimizer without a learning rate) become missing
    values, which JSON and CSV can hold."""
    return value if value is None or math.isfinite(value) else None


def _squares(values: np.ndarray) -> float:
    """The sum of the squares of a 1-D array. Not ``values @ values``: BLAS spreads a dot
    this size over its threads, whose wake-up (after the casts between two dots) cost 8 ms
    a block here, against 0.1 ms for numpy's own loop."""
    return float(np.einsum("i,i->", values, values))


def _blocks(size: int) -> Iterator[slice]:
    return (slice(start, start + BLOCK) for start in range(0, size, BLOCK))


def _gradient(grad: np.ndarray) -> tuple[float | None, bool]:
    """The gradient's L2 norm (float64) and whether it is zero everywhere."""
    flat = grad.reshape(-1)
    squares, nonzero = 0.0, False
    for part in _blocks(flat.size):
        g = flat[part].astype(np.float64)
        squares += _squares(g)
        nonzero = nonzero or bool(np.any(g != 0))
    return _finite(math.sqrt(squares)), not nonzero


@dataclass
class _Sums:
    """A step's counts and sums over a block of its coordinates, added up in block order."""

    moved: int = 0
    ulps: int = 0
    ulp_max: int = 0
    prev_sq: float = 0.0
    first_sq: float = 0.0
    weight_sq: float = 0.0
    predicted: int = 0
    agreed: int = 0

    def add(self, other: _Sums) -> None:
        for name in ("moved", "ulps", "prev_sq", "first_sq", "weight_sq", "predicted", "agreed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ulp_max = max(self.ulp_max, other.ulp_max)


def _block_sums(
    flat: Mapping[str, np.ndarray], prediction: Prediction | None, step: int, part: slice
) -> _Sums:
    """One block's sums: ``flat`` holds the flattened ``current``, ``prev`` and ``first``
    and, with a prediction, its inputs by role (0-d arrays for scalars)."""
    c, p, f = (flat[key][part] for key in ("current", "prev", "first"))
    ulps = ulp_distance(c, p)
    hopped = ulps != 0
    wide = wide_dtype(c.dtype)  # exact for every value and every gap between two
    cw, pw, fw = (x.astype(wide) for x in (c, p, f))
    d, e = cw - pw, cw - fw
    sums = _Sums(
        moved=int(np.count_nonzero(hopped)),
        ulps=int(ulps.sum(dtype=np.uint64)),
        ulp_max=int(ulps.max()),
        prev_sq=_squares(d),
        first_sq=_squares(e),
        weight_sq=_squares(pw),
    )
    if prediction is not None:
        moves = predicted_moves(prediction, p, _part_of(flat, prediction, part), step)
        sums.predicted = int(np.count_nonzero(moves))
        sums.agreed = int(np.count_nonzero(moves == hopped))
    return sums


def _part_of(
    flat: Mapping[str, np.ndarray], prediction: Prediction, part: slice | np.ndarray
) -> dict[str, np.ndarray]:
    """The rule's inputs at some coordinates (scalars as they are)."""
    return {role: flat[role][part] if flat[role].ndim else flat[role] for role in prediction.inputs}


def _compare(
    current: np.ndarray,
    prev: np.ndarray,
    first: np.ndarray,
    prediction: Prediction | None,
    inputs: Mapping[str, np.ndarray] | None,
    step: int,
) -> dict[str, Any]:
    """One step's observed (and, given ``inputs``, predicted) statistics: counts over every
    coordinate, block by block; the predicted update's sizes over the fixed sample."""
    flat = {"current": current, "prev": prev, "first": first}
    flat = {key: v.reshape(-1) for key, v in flat.items()}
    if inputs is None:
        prediction = None
    for role, v in (inputs or {}).items():
        flat[role] = v.reshape(-1) if v.shape == current.shape else np.asarray(v).reshape(())
    n = current.size
    total = _Sums()
    for part in _blocks(n):
        total.add(_block_sums(flat, prediction, step, part))
    stats: dict[str, Any] = {
        "hop_fraction": total.moved / n,
        "hop_ulps_mean": total.ulps / total.moved if total.moved else None,
        "hop_ulps_max": total.ulp_max if total.moved else None,
        "displacement_prev": _finite(math.sqrt(total.prev_sq)),
        "displacement_first": _finite(math.sqrt(total.first_sq)),
        "update_to_weight_rms": _ratio(total.prev_sq, total.weight_sq),
    }
    if prediction is not None:
        index = sample_indices(n)
        previous = flat["prev"][index]
        sized = predicted_update(prediction, previous, _part_of(flat, prediction, index), step)
        weights = previous.astype(np.float64)
        stats.update(
            {
                "predicted_hop_fraction": total.predicted / n,
                "agreement": total.agreed / n,
                "predicted_update_ulps_mean": _finite(float(np.mean(sized.ulps))),
                "predicted_update_ulps_median": _finite(float(np.median(sized.ulps))),
                "predicted_update_to_weight_rms": _ratio(_squares(sized.update), _squares(weights)),
            }
        )
    return stats


def _ratio(squares: float, weight_squares: float) -> float | None:
    """``sqrt(squares / weight_squares)``: a ratio of two RMS over the same coordinates."""
    if not weight_squares:
        return None
    return _finite(math.sqrt(squares / weight_squares))
