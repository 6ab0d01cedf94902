"""PNG plots of an analysis: the notebook's (with other runs overlaid, e.g. WB1 against its
continuation WB3), and a by-name recording's, one per parameter and an overview.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting needs no
display and leaves the process's global matplotlib state alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:  # types only: the by-name plots need no torch, the notebook's module does
    from wordybird.analysis.hops import Analysis
    from wordybird.analysis.parameters import ParameterAnalysis, ParametersAnalysis

HOPS_PNG = "hops.png"
DISPLACEMENT_PNG = "displacement.png"
OVERVIEW_PNG = "overview.png"
#: Parameters the overview names in its legend; more are drawn without names.
OVERVIEW_LEGEND = 12


def _symlog(ax: Axes, *series: np.ndarray, floor: float = np.inf) -> None:
    """Log scale above the smallest positive value, linear below it.

    Hop fractions and per-step displacements fall to exactly 0 once frozen; a plain log
    scale would hide the freeze itself, so zeros stay visible on a short linear stretch
    (below the smallest positive value, or ``floor`` when that is lower). All the plotted
    quantities are non-negative.
    """
    values = np.concatenate([s[np.isfinite(s)] for s in series])
    positive = values[values > 0]
    if positive.size:
        ax.set_yscale("symlog", linthresh=float(min(positive.min(), floor)), linscale=0.5)
    ax.set_ylim(bottom=0)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def plot_hops(main: Analysis, compare: Sequence[Analysis], path: Path) -> Path:
    """Hop fractions (observed, predicted) and the learning rate over steps."""
    fig = Figure(figsize=(10, 7), layout="constrained")
    hops, lr = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    shown: list[np.ndarray] = []
    for i, run in enumerate((main, *compare)):
        color = f"C{i}"
        steps = run.series("step")
        # the main run shows both groups; compared runs only the untrained one, to stay legible
        groups = (("untrained", "-", "--"), ("trained", ":", "-."))[: 2 if i == 0 else 1]
        for group, style, predicted_style in groups:
            observed = run.series(f"{group}_hop_fraction")
            predicted = run.series(f"predicted_{group}_hop_fraction")
            hops.plot(steps, observed, style, color=color, label=f"{run.label} {group}")
            if not np.all(np.isnan(predicted)):
                hops.plot(
                    steps,
                    predicted,
                    predicted_style,
                    color=color,
                    alpha=0.6,
                    label=f"{run.label} {group} predicted",
                )
            shown += [observed, predicted]
        frozen = run.summary["freeze_step"]
        if frozen is not None:
            hops.axvline(frozen, color=color, linewidth=0.8, alpha=0.5)
        lr.plot(steps, run.series("learning_rate"), color=color, label=run.label)
    hops.axhline(
        main.summary["threshold"],
        color="grey",
        linewidth=0.8,
        linestyle="-.",
        label="freeze threshold",
    )
    _symlog(hops, *shown, floor=main.summary["threshold"])
    hops.set_ylabel("fraction of coordinates that hopped")
    hops.set_title("bf16 lattice hops per recorded step (vertical lines: freeze step)")
    hops.legend(fontsize="small")
    lr.set_ylabel("learning rate")
    lr.set_xlabel("step")
    lr.legend(fontsize="small")
    return _save(fig, path)


def plot_displacement(main: Analysis, compare: Sequence[Analysis], path: Path) -> Path:
    """Untrained tokens' displacement per step and since the start, and their cloud's size."""
    fig = Figure(figsize=(10, 9), layout="constrained")
    per_step, total, cloud = fig.subplots(3, 1, sharex=True)
    per_step_series: list[np.ndarray] = []
    for i, run in enumerate((main, *compare)):
        color = f"C{i}"
        steps = run.series("step")
        mean, top = (run.series(f"untrained_displacement_prev_{k}") for k in ("mean", "max"))
        per_step.plot(steps, mean, "-", color=color, label=f"{run.label} mean")
        per_step.plot(steps, top, "--", color=color, alpha=0.6, label=f"{run.label} max")
        per_step_series += [mean, top]
        for stat, style, alpha in (("mean", "-", 1.0), ("max", "--", 0.6)):
            total.plot(
                steps,
                run.series(f"untrained_displacement_first_{stat}"),
                style,
                color=color,
                alpha=alpha,
                label=f"{run.label} {stat}",
            )
        cloud.plot(
            steps,
            run.series("untrained_centroid_norm"),
            "-",
            color=color,
            label=f"{run.label} centroid norm",
        )
        cloud.plot(
            steps, run.series("untrained_radius"), "--", color=color, label=f"{run.label} radius"
        )
    _symlog(per_step, *per_step_series)
    per_step.set_ylabel("‖W_t − W_prev‖ per token")
    per_step.set_title("untrained token displacement (float32 norms of bf16 rows)")
    total.set_ylabel("‖W_t − W_first‖ per token")
    cloud.set_ylabel("untrained cloud")
    cloud.set_xlabel("step")
    for ax in (per_step, total, cloud):
        ax.legend(fontsize="small")
    return _save(fig, path)


def write_plots(
    main: Analysis, compare: Sequence[Analysis], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Write ``hops.png`` and ``displacement.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_hops(main, compare, out / HOPS_PNG),
        plot_displacement(main, compare, out / DISPLACEMENT_PNG),
    ]


def plot_parameter(analysis: ParameterAnalysis, threshold: float, path: Path) -> Path:
    """One parameter's moving fraction, observed and predicted, and its learning rate."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    hops, lr = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    steps = analysis.series("step")
    observed = analysis.series("hop_fraction")
    predicted = analysis.series("predicted_hop_fraction")
    hops.plot(steps, observed, "-", color="C0", label="observed")
    shown = [observed]
    if not np.all(np.isnan(predicted)):
        hops.plot(steps, predicted, "--", color="C1", label="predicted (update rule)")
        shown.append(predicted)
    hops.axhline(threshold, color="grey", linewidth=0.8, linestyle="-.", label="threshold")
    v = analysis.verdict
    title = f"{analysis.name} ({analysis.dtype}): "
    if v.frozen_from_step is not None:
        hops.axvline(v.frozen_from_step, color="C3", linewidth=0.8, label="frozen from")
        title += f"frozen from step {v.frozen_from_step} ({v.cause})"
    else:
        title += "not frozen"
    _symlog(hops, *shown, floor=threshold)
    hops.set_ylabel("fraction of coordinates that moved")
    hops.set_title(title)
    hops.legend(fontsize="small")
    rates = analysis.series("learning_rate")
    lr.plot(steps, rates, color="C2")
    if np.any(rates > 0):
        lr.set_yscale("log")
    lr.set_ylabel("learning rate")
    lr.set_xlabel("step")
    return _save(fig, path)


def plot_overview(analysis: ParametersAnalysis, path: Path) -> Path:
    """Every analysed parameter's observed moving fraction over the steps."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    threshold = analysis.summary["threshold"]
    shown = []
    parameters = list(analysis.parameters.values())
    for i, parameter in enumerate(parameters):
        fraction = parameter.series("hop_fraction")
        frozen = parameter.verdict.frozen_from_step
        label = parameter.name + (f" (frozen from {frozen})" if frozen is not None else "")
        ax.plot(
            parameter.series("step"),
            fraction,
            color=f"C{i % 10}",
            linewidth=1.0,
            label=label if len(parameters) <= OVERVIEW_LEGEND else None,
        )
        shown.append(fraction)
    ax.axhline(threshold, color="grey", linewidth=0.8, linestyle="-.", label="threshold")
    _symlog(ax, *shown, floor=threshold)
    frozen = len(analysis.frozen())
    ax.set_title(
        f"{analysis.label}: fraction of each parameter's coordinates that moved per recorded "
        f"step ({frozen} of {len(parameters)} frozen)"
    )
    ax.set_ylabel("fraction of coordinates that moved")
    ax.set_xlabel("step")
    ax.legend(fontsize="small")
    return _save(fig, path)
