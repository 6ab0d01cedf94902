"""The analysis's outputs: ``analysis.json``, ``analysis.csv`` and the terminal report.

The report states the freeze step and whether the recorded Adam state explains it, in
numbers taken from the records, so that a reader can check the claim against the CSV.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wordybird.analysis.hops import COLUMNS, Analysis

JSON_NAME = "analysis.json"
CSV_NAME = "analysis.csv"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3g}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _record_at(analysis: Analysis, step: int) -> dict[str, Any]:
    return next(r for r in analysis.records if r["step"] == step)


def explanation(analysis: Analysis) -> str:
    """One paragraph: when the untrained coordinates stop hopping, and whether Adam's
    update shrinking below half the bf16 spacing accounts for it."""
    s = analysis.summary
    threshold = s["threshold"]
    frozen = s["freeze_step"]
    rec = _record_at(analysis, frozen if frozen is not None else s["last_step"])
    observed = rec["untrained_hop_fraction"]
    predicted = rec["predicted_untrained_hop_fraction"]
    sizes = (
        f"lr {_num(rec['learning_rate'])}, the median untrained |u| is "
        f"{_num(rec['untrained_update_ratio_median'])}× half the bf16 spacing"
    )
    compared = (
        f"predicted {_pct(predicted)} vs observed {_pct(observed)} of untrained coordinates "
        f"hopping (agreement {_pct(rec['untrained_prediction_agreement'])} of coordinates)"
    )
    if frozen is None:
        text = (
            f"not frozen: untrained coordinates still hop at the last step {rec['step']} "
            f"({_pct(observed)} >= threshold {threshold:g})"
        )
        if predicted is None:
            return f"{text}; {s['prediction']}."
        return f"{text}; Adam update lr·m̂/(√v̂+ε) at that step: {sizes}; {compared}."
    text = (
        f"untrained coordinates stop hopping at step {frozen} (hop fraction below "
        f"{threshold:g} from then on)"
    )
    if predicted is None:
        return f"{text}; {s['prediction']}, so it cannot be compared with the bf16 spacing."
    if predicted < threshold:
        later = s["predicted_freeze_step"]
        return (
            f"{text} because the Adam update lr·m̂/(√v̂+ε) falls below half the bf16 spacing: "
            f"at step {frozen}, {sizes}; {compared}; the prediction alone freezes "
            + (f"at step {later}." if later is not None else "never (it still predicts hops).")
        )
    return (
        f"{text}, but the Adam update lr·m̂/(√v̂+ε) does not explain it: at step {frozen}, "
        f"{sizes}; {compared}."
    )


def to_json(analysis: Analysis) -> dict[str, Any]:
    """The analysis as plain JSON: summary (with the explanation) and the per-step records."""
    return {
        "summary": {**analysis.summary, "explanation": explanation(analysis)},
        "records": analysis.records,
    }


def write_outputs(
    analysis: Analysis, compare: Sequence[Analysis], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write ``analysis.json`` (with the compared runs under ``"compare"``) and the CSV."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = to_json(analysis)
    document["compare"] = [to_json(other) for other in compare]
    json_path = out / JSON_NAME
    json_path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    csv_path = out / CSV_NAME
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for record in analysis.records:
            writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return [json_path, csv_path]


def format_report(analysis: Analysis, compare: Sequence[Analysis] = ()) -> str:
    """The terminal summary: the run, the assumptions, the freeze step and its explanation."""
    s = analysis.summary
    first, last = analysis.records[0], analysis.records[-1]
    adam = s["adam"]
    lines = [
        f"{s['recording']}: {s['recorded_steps']} recorded steps ({s['first_step']}.."
        f"{s['last_step']}), {s['n_untrained']:,} untrained / {s['n_trained']:,} trained of "
        f"{s['vocab_size']:,} tokens (masks: {s['masks']})",
        f"  learning rate: {s['learning_rate_source']}",
        f"  Adam: beta1 {adam['beta1']:g}, beta2 {adam['beta2']:g}, eps {adam['epsilon']:g}, "
        f"weight decay {adam['weight_decay']:g}; {s['optimizer_step_rule']}; {s['prediction']}",
        f"  untrained cloud: centroid norm {_num(first['untrained_centroid_norm'])} -> "
        f"{_num(last['untrained_centroid_norm'])}, radius {_num(first['untrained_radius'])} -> "
        f"{_num(last['untrained_radius'])} (step {s['first_step']} -> {s['last_step']})",
        f"  untrained displacement {s['first_step']} -> {s['last_step']}: max "
        f"{_num(last['untrained_displacement_first_max'])}, mean "
        f"{_num(last['untrained_displacement_first_mean'])}, median "
        f"{_num(last['untrained_displacement_first_median'])}",
        f"  last step hops: untrained {_pct(last['untrained_hop_fraction'])} (predicted "
        f"{_pct(last['predicted_untrained_hop_fraction'])}), trained "
        f"{_pct(last['trained_hop_fraction'])} (predicted "
        f"{_pct(last['predicted_trained_hop_fraction'])})",
        f"  freeze step (untrained hop fraction < {s['threshold']:g} from then on): "
        + (str(s["freeze_step"]) if s["freeze_step"] is not None else "not frozen"),
        f"  {explanation(analysis)}",
    ]
    for other in compare:
        o = other.summary
        frozen = o["freeze_step"]
        lines.append(
            f"  compare {o['label']} ({o['first_step']}..{o['last_step']}): "
            + (f"freeze step {frozen}" if frozen is not None else "not frozen")
            + f"; last untrained hop fraction {_pct(other.records[-1]['untrained_hop_fraction'])}"
            f" (predicted {_pct(other.records[-1]['predicted_untrained_hop_fraction'])})"
        )
    return "\n".join(lines)
