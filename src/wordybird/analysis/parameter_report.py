"""A by-name analysis's outputs: ``analysis.json``, one CSV and one plot per parameter, an
overview plot, and the terminal report, which names the frozen parameters first.

Every claim of the report (the step, the cause, the remedy's learning rate) is a number of
``analysis.json``, so a reader can check it against the per-step columns.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from wordybird.analysis.freeze import percent
from wordybird.analysis.parameters import COLUMNS, ParametersAnalysis
from wordybird.analysis.plots import OVERVIEW_PNG, plot_overview, plot_parameter

JSON_NAME = "analysis.json"
#: The folder of the per-parameter CSVs and plots, inside the output folder.
PARAMETERS_DIR = "parameters"


def file_stems(names: list[str]) -> dict[str, str]:
    """A file name (without suffix) per parameter name: its letters, digits, ``.``, ``_``
    and ``-`` kept, anything else ``_``; never hidden, never two alike (even on a
    case-insensitive disk)."""
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "parameter"
        unique, n = stem, 1
        while unique.lower() in taken:
            n += 1
            unique = f"{stem}-{n}"
        taken.add(unique.lower())
        stems[name] = unique
    return stems


def to_json(analysis: ParametersAnalysis, stems: dict[str, str]) -> dict[str, Any]:
    """The analysis as plain JSON: ``parameters`` keyed by name, and the summary."""
    files = {
        name: {"csv": f"{PARAMETERS_DIR}/{stem}.csv", "plot": f"{PARAMETERS_DIR}/{stem}.png"}
        for name, stem in stems.items()
    }
    return {
        "summary": {**analysis.summary, "files": files},
        "parameters": {name: p.to_json() for name, p in analysis.parameters.items()},
    }


def write_outputs(analysis: ParametersAnalysis, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``analysis.json``, ``parameters/<name>.csv`` and ``.png`` and ``overview.png``."""
    out = Path(out_dir)
    folder = out / PARAMETERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stems = file_stems(list(analysis.parameters))
    json_path = out / JSON_NAME
    document = to_json(analysis, stems)
    json_path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    written = [json_path]
    threshold = analysis.summary["threshold"]
    for name, parameter in analysis.parameters.items():
        csv_path = folder / f"{stems[name]}.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for record in parameter.records:
                writer.writerow({k: "" if v is None else v for k, v in record.items()})
        written += [csv_path, plot_parameter(parameter, threshold, folder / f"{stems[name]}.png")]
    written.append(plot_overview(analysis, out / OVERVIEW_PNG))
    return written


def format_report(analysis: ParametersAnalysis) -> str:
    """The terminal summary: the frozen parameters first (earliest freeze first), each with
    its step, cause and remedy; then those still moving; then why some were observed only."""
    s = analysis.summary
    frozen = analysis.frozen()
    moving = [p for p in analysis.parameters.values() if p.verdict.frozen_from_step is None]
    lines = [
        f"{s['recording']}: {s['recorded_steps']} recorded steps ({s['first_step']}.."
        f"{s['last_step']}), {s['parameters']} parameter(s) analysed"
        + (f" ({s['optimizer']})" if s["optimizer"] else "")
        + f"; frozen: moving fraction below {s['threshold']:g} from a step to the end",
        f"frozen: {len(frozen)} of {s['parameters']}" + (":" if frozen else ""),
    ]
    for p in frozen:
        v = p.verdict
        lines.append(f"  {p.name}: frozen from step {v.frozen_from_step}; {v.cause}: {v.reason}")
        if v.remedy:
            lines.append(f"    remedy: {v.remedy}")
    if moving:
        lines.append(f"still moving: {len(moving)}:")
    for p in moving:
        last = p.records[-1]
        predicted = last["predicted_hop_fraction"]
        lines.append(
            f"  {p.name}: {percent(last['hop_fraction'])} of its coordinates moved at step "
            f"{last['step']}"
            + (
                f" (predicted {percent(predicted)}, agreement {percent(last['agreement'])})"
                if predicted is not None
                else ""
            )
        )
    unpredicted: dict[str, list[str]] = {}
    for p in analysis.parameters.values():
        if p.no_prediction is not None:
            unpredicted.setdefault(p.no_prediction, []).append(p.name)
    for reason, names in unpredicted.items():
        lines.append(f"observed only ({', '.join(names)}): {reason}")
    return "\n".join(lines)
