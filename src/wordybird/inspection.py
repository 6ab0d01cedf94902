"""What a recording holds, at a glance: ``wordybird inspect PATH`` for a store or an export.

It reads through the :class:`~wordybird.recording.Recording` interface in numpy, so it
answers without importing torch.

The report is a plain JSON-able dict (``--json`` prints it as is) so scripts can check a
recording without parsing text; :func:`format_report` renders it for people.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import numpy as np

from wordybird import opening
from wordybird.clitypes import PathOrURL, storage_options
from wordybird.recording import Recording

#: The per-step loss field of a training recording (the initial state's loss is NaN).
LOSS_FIELD = "losses"


def inspect_recording(
    path: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A summary of the recording at ``path``: layout, steps, sizes, compression, loss."""
    with opening.open(path, storage_options=storage_options) as rec:
        steps = rec.steps
        report: dict[str, Any] = {
            "path": str(rec.path),
            "format": rec.format,
            "steps": {
                "count": len(steps),
                "first": int(steps[0]) if len(steps) else None,
                "last": int(steps[-1]) if len(steps) else None,
            },
            "size_on_disk": rec.size_on_disk(),
            "fields": [_field_report(rec, name) for name in rec.fields],
            "loss": _loss_report(rec),
            "metadata": rec.metadata,
        }
        report.update(rec.details())
    return report


def _field_report(rec: Recording, name: str) -> dict[str, Any]:
    view = rec[name]
    raw = math.prod(view.shape) * view.numpy_dtype.itemsize
    entry: dict[str, Any] = {
        "name": name,
        "shape": list(view.shape),
        "dtype": str(view.numpy_dtype),
        "raw_bytes": raw,
    }
    if rec.format == "zarr":  # compressed: worth a ratio
        on_disk = rec.nbytes_on_disk(name)
        entry["bytes_on_disk"] = on_disk
        entry["compression_ratio"] = raw / on_disk if on_disk else None
    return entry


def _loss_report(rec: Recording) -> dict[str, Any] | None:
    """First, last and lowest loss over the steps that have one (the initial state has NaN)."""
    if LOSS_FIELD not in rec or rec.step_shape(LOSS_FIELD) != () or not len(rec):
        return None
    losses = rec[LOSS_FIELD].numpy(slice(None)).astype(np.float64)
    known = np.flatnonzero(~np.isnan(losses))
    if not len(known):
        return None
    steps = rec.steps
    lowest = int(known[np.argmin(losses[known])])
    first, last = int(known[0]), int(known[-1])
    return {
        "first": {"step": int(steps[first]), "value": float(losses[first])},
        "last": {"step": int(steps[last]), "value": float(losses[last])},
        "min": {"step": int(steps[lowest]), "value": float(losses[lowest])},
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    steps = report["steps"]
    lines = [f"{report['path']}", f"  format:    {report['format']}"]
    if "mode" in report:
        lines[-1] += f" ({report['mode']} mode)"
    if "files" in report:
        lines[-1] += f" ({len(report['files'])} files)"
    span = f"{steps['first']}..{steps['last']}" if steps["count"] else "none"
    lines.append(f"  steps:     {steps['count']} recorded, {span}")
    if "committed" in report:
        lines.append(
            f"  committed: {report['committed']} step(s), "
            f"{report['uncommitted']} in progress or left by a crash"
        )
    lines.append(f"  on disk:   {_human(report['size_on_disk'])}")
    lines.append("  fields:")
    width = max((len(f["name"]) for f in report["fields"]), default=0)
    for field in report["fields"]:
        shape = "[" + ", ".join(map(str, field["shape"])) + "]"
        size = _human(field["raw_bytes"])
        line = f"    {field['name']:<{width}}  {field['dtype']:<8} {shape:<18} {size}"
        if field.get("compression_ratio"):
            line += (
                f"  -> {_human(field['bytes_on_disk'])} on disk ({field['compression_ratio']:.2f}x)"
            )
        lines.append(line)
    loss = report["loss"]
    if loss is not None:
        lines.append(
            "  loss:      "
            + ", ".join(
                f"{key} {loss[key]['value']:.4f} (step {loss[key]['step']})"
                for key in ("first", "last", "min")
            )
        )
    if report["metadata"]:
        lines.append("  metadata:")
        for key, value in sorted(report["metadata"].items()):
            text = json.dumps(value)
            lines.append(f"    {key}: {text if len(text) <= 72 else text[:69] + '...'}")
    return "\n".join(lines)


def _human(nbytes: int) -> str:
    if nbytes < 1000:
        return f"{nbytes} B"
    value = nbytes / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


@click.command()
@click.argument("path", type=PathOrURL())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@storage_options
def inspect(path: Path | str, as_json: bool, storage_options: dict[str, str]) -> None:
    """Show what PATH (a Zarr recording, local or s3://, an exported file or a split
    export) holds."""
    report = inspect_recording(path, storage_options or None)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
