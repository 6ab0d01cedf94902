"""A finished run's closing numbers, as the notebook printed them; saved as ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from wordybird.storage import Location
from wordybird.training.config import (
    CHECKPOINT_PREFIX,
    MASKS,
    SUMMARY,
    RunPlan,
    RunResult,
)
from wordybird.training.control import RunControl
from wordybird.training.schedules import WordybirdTrainer


def summarize(
    out: Path,
    trainer: WordybirdTrainer,
    control: RunControl,
    plan: RunPlan,
    recording: Location | None,
) -> dict[str, Any]:
    """The notebook's closing numbers, read back lazily from ``recording`` (None: the run
    recorded nothing); written to ``summary.json`` in the run folder ``out``."""
    from safetensors.torch import load_file

    from wordybird.recorder.reader import ZarrRecording

    logged = [
        (int(e["step"]), float(e["loss"]))
        for e in trainer.state.log_history
        if "loss" in e and e.get("step", 0) > plan.start_step
    ]
    summary: dict[str, Any] = {
        "first_step": plan.start_step,
        "last_step": trainer.state.global_step,
        "seconds_per_step": control.seconds_per_step,
        "checkpoint": str(out / f"{CHECKPOINT_PREFIX}{trainer.state.global_step}"),
    }
    if logged:
        summary["loss_first"] = {"step": logged[0][0], "loss": logged[0][1]}
        summary["loss_last"] = {"step": logged[-1][0], "loss": logged[-1][1]}
    if recording is not None:
        untrained = load_file(str(out / MASKS))["untrained_indices"]
        with ZarrRecording(recording) as rec:
            summary["recording"] = str(recording)
            summary["recorded_steps"] = len(rec)
            if len(rec) >= 2 and len(untrained):
                emb = rec["embeddings"]
                first, last = emb[0][untrained].float(), emb[-1][untrained].float()
                disp = torch.linalg.vector_norm(last - first, dim=1)
                summary["untrained_displacement"] = {
                    "from_step": int(rec.steps[0]),
                    "to_step": int(rec.steps[-1]),
                    "tokens": len(untrained),
                    "max": disp.max().item(),
                    "mean": disp.mean().item(),
                    "median": disp.median().item(),
                }
            summary["bytes_on_disk"] = sum(rec.nbytes_on_disk(f) for f in rec.fields)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(result: RunResult) -> str:
    """The summary as the notebook printed it."""
    s = result.summary
    lines = [
        f"Training complete: steps {result.first_step + 1}-{result.last_step} "
        f"({s['seconds_per_step']:.2f} s/step)"
    ]
    if "loss_first" in s:
        a, b = s["loss_first"], s["loss_last"]
        lines.append(
            f"  Loss: step {a['step']} {a['loss']:.4f} -> step {b['step']} {b['loss']:.4f} "
            f"(change {b['loss'] - a['loss']:+.4f})"
        )
    d = s.get("untrained_displacement")
    if d:
        lines.append(
            f"  Untrained-token displacement (steps {d['from_step']} -> {d['to_step']}, "
            f"{d['tokens']:,} tokens): max {d['max']:.2e}  mean {d['mean']:.2e}  "
            f"median {d['median']:.2e}"
        )
    if "recording" in s:
        lines.append(
            f"  Recording: {s['recording']} ({s['recorded_steps']} steps, "
            f"{s['bytes_on_disk'] / 1e6:.1f} MB on disk)"
        )
    lines.append(f"  Checkpoint: {s['checkpoint']}")
    return "\n".join(lines)
