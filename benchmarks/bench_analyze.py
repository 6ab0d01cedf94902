"""``wordybird analyze`` on a GPT-2-small-shaped recording, and the live freeze monitor's cost.

The recording: ``transformer.wte.weight`` of GPT-2 small (50,257 x 768, bf16), trained by a
plain loop with ``torch.optim.AdamW`` (weight decay 0.1) in pure bf16 and recorded by
``wordybird.watch`` (value, pre-clip gradient, ``exp_avg``, ``exp_avg_sq``, ``step``, ``lr``
and the monitor's ``moved``: 308.8 MB a step of big fields), 20 steps by default. The loss
is ``sum(W · R)`` with a fresh random ``R`` each step, so every coordinate gets a dense,
Adam-like update; the learning rate decays geometrically from 1e-3 to 1e-8 over the first
two thirds of the steps and stays there, so the embedding goes from moving to frozen, and
the monitor sees it through its patience, within the run.
The same steps are then re-recorded into a predictive store (the update rules from the
first recording's metadata), whose reader decodes through the predictor.

Figures, all from this one run (the machine may be shared: compare the ratios):

- ``wordybird analyze REC --parameter transformer.wte.weight`` as its own process, on the
  default and on the predictive store: seconds per recorded step (the whole command, start
  and plots included, over the steps) and peak RSS (``_common.peak_rss_of``), against the goal
  ``<= 2 x one step of the analysed fields + 300 MB``;
- the monitor's cost per step on this parameter: CPU-seconds of ``FreezeMonitor.observe``
  alone (replayed on two recorded steps held in memory, nothing else running), on an
  ordinary step (one gathered sample, one comparison) and on a step below the threshold
  (the rule's inputs gathered too, the predictor run on the sample), and its wall time
  inside the training loop; against the goal ``<= 1%`` of the writer's CPU-seconds per
  step, measured in the same loop.

Run: ``python benchmarks/bench_analyze.py [--steps 20]`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import wordybird
from _common import peak_rss_of, writer_cpu_seconds
from wordybird.capture.monitor import FreezeMonitor, Watched
from wordybird.recorder.predict import Prediction

WTE = "transformer.wte.weight"
VOCAB, DIM = 50257, 768
#: The fields whose one step the analysis holds (the goal's unit).
ANALYSED = ("value", "grad", "exp_avg", "exp_avg_sq")
GOAL_RSS_SLACK = 300e6
GOAL_MONITOR_SHARE = 0.01


class Embedding(nn.Module):
    """GPT-2 small's input embedding alone, under its name in GPT2LMHeadModel."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(VOCAB, DIM)
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        self.to(torch.bfloat16)


def record(path: Path, steps: int) -> dict[str, Any]:
    """Train and record ``steps`` steps; the monitor's wall seconds per step in the loop and
    the writer's CPU-seconds per step."""
    torch.manual_seed(0)
    model = Embedding()
    weight = model.transformer.wte.weight
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, foreach=False)
    # 1e-3 down to 1e-8 over the first two thirds of the steps, then held: a freeze the
    # monitor sees through its patience before the end
    ramp = max(1, (2 * steps) // 3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1e-5 ** (min(k, ramp) / ramp))
    monitor = FreezeMonitor()
    observe = monitor.observe
    in_loop: list[tuple[float, float]] = []

    def timed(step: int, fields: Any) -> Any:
        start, start_cpu = time.perf_counter(), time.thread_time()
        moved = observe(step, fields)
        in_loop.append((time.perf_counter() - start, time.thread_time() - start_cpu))
        return moved

    monitor.observe = timed  # type: ignore[method-assign]
    recorder = wordybird.StreamingRecorder(path, queue_size=1)
    g = torch.Generator().manual_seed(1)
    writer_before = writer_cpu_seconds(recorder)
    with wordybird.watch(model, optimizer, recorder, parameters=[WTE], monitor=monitor):
        for _ in range(steps):
            direction = torch.randn(VOCAB, DIM, generator=g)
            (weight.float() * direction).sum().mul(1e-3).backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    return {
        "monitor_wall_s": in_loop,
        "writer_cpu_s": (writer_cpu_seconds(recorder) - writer_before) / steps,
        "warned": {n: w.step for n, w in monitor.warned.items()},
    }


def replay_monitor(path: Path, threshold: float, repeats: int = 200) -> tuple[float, float]:
    """Median CPU- and wall-seconds of one ``FreezeMonitor.observe`` on two recorded steps
    held in memory, alternately (nothing else running): below ``threshold`` = 1 every step
    takes the explaining path, above a tiny one the ordinary path. On one torch thread: a
    second one would add its spin-waits to the process's CPU time, and a core busy
    elsewhere (the writer, another process) its waits to the wall time, neither of them
    the monitor's work."""
    with wordybird.open(path) as rec:
        names = [f for f in rec.fields if f.startswith(WTE)] + ["grad_norms"]
        steps = [{name: rec[name][p] for name in names} for p in (len(rec) - 2, len(rec) - 1)]
        prediction = Prediction.from_json(rec.metadata["predictions"][f"{WTE}/value"])
    monitor = FreezeMonitor(threshold=threshold, patience=10**9)
    watched = Watched(WTE, f"{WTE}/value", f"{WTE}/grad", f"{WTE}/lr", prediction)
    monitor.start({WTE: watched}, steps[0])
    cpu, wall = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for step in range(1, repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        monitor.observe(step, steps[step % 2])
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return statistics.median(cpu[1:]), statistics.median(wall[1:])


def rerecord_predictive(source: Path, path: Path) -> None:
    """The same steps in a predictive store, predicted by the rules in the metadata."""
    with (
        wordybird.open(source) as rec,
        wordybird.StreamingRecorder(
            path, mode="predictive", metadata=rec.metadata, queue_size=1
        ) as out,
    ):
        rules = {f: Prediction.from_json(p) for f, p in rec.metadata["predictions"].items()}
        for position, step in enumerate(rec.steps):
            out.record(int(step), {f: rec[f][position] for f in rec.fields}, predictions=rules)


def analyze(path: Path, out: Path) -> dict[str, Any]:
    """``wordybird analyze`` in its own process: wall seconds, peak RSS, its verdict."""
    command = [sys.executable, "-m", "wordybird.cli", "analyze", str(path), "--out", str(out)]
    command += ["--parameter", WTE]
    start = time.perf_counter()
    rss = peak_rss_of(command)
    wall = time.perf_counter() - start
    document = json.loads((out / "analysis.json").read_text())
    return {"wall_s": wall, "peak_rss": rss, "verdict": document["parameters"][WTE]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        default, predictive = folder / "default.zarr", folder / "predictive.zarr"
        started = time.perf_counter()

        def phase(text: str) -> None:
            print(f"  [{time.perf_counter() - started:5.0f} s] {text}", flush=True)

        phase(f"recording {args.steps} steps of {WTE} ({VOCAB} x {DIM}, bf16, AdamW)")
        loop = record(default, args.steps)
        with wordybird.open(default) as rec:
            step_bytes = sum(rec[f"{WTE}/{key}"].numpy(0).nbytes for key in ANALYSED)
        phase("re-recording them in predictive mode")
        rerecord_predictive(default, predictive)
        phase("replaying the monitor")
        ordinary = replay_monitor(default, threshold=1e-12)
        explaining = replay_monitor(default, threshold=1.0)
        runs = {}
        for mode, path in (("default", default), ("predictive", predictive)):
            phase(f"wordybird analyze, {mode} store")
            runs[mode] = analyze(path, folder / f"out-{mode}")
        phase("done")
    verdicts = [{k: v for k, v in r["verdict"].items() if k != "prediction"} for r in runs.values()]
    if verdicts[0] != verdicts[1]:
        raise SystemExit("the analyses of the two stores differ")

    goal_rss = 2 * step_bytes + GOAL_RSS_SLACK
    v = runs["default"]["verdict"]
    print(
        f"== wordybird analyze, {args.steps} steps of {WTE}: one step of the analysed fields "
        f"({', '.join(ANALYSED)}) {step_bytes / 1e6:.1f} MB"
    )
    for mode, run in runs.items():
        print(
            f"  {mode:10s} {run['wall_s']:6.1f} s = {run['wall_s'] / args.steps:5.2f} s/step, "
            f"peak RSS {run['peak_rss'] / 1e6:5.0f} MB = 2 x step "
            f"{(run['peak_rss'] - 2 * step_bytes) / 1e6:+.0f} MB  (goal <= "
            f"{goal_rss / 1e6:.0f} MB: {'met' if run['peak_rss'] <= goal_rss else 'missed'})"
        )
    print(
        f"  verdict: frozen from step {v['frozen_from_step']} ({v['cause']}); last moving "
        f"fraction {v['hop_fraction'][-1]:.3g}, predicted {v['predicted_hop_fraction'][-1]:.3g}, "
        f"agreement {min(a for a in v['agreement'] if a is not None):.4f} at worst"
    )
    writer = loop["writer_cpu_s"]
    wall = statistics.median(w for w, _ in loop["monitor_wall_s"][1:])
    thread_cpu = statistics.median(c for _, c in loop["monitor_wall_s"][1:])
    print(f"== the monitor on {WTE} (a sample of 65,536 of {VOCAB * DIM:,} coordinates)")
    print(f"  writer: {writer:.3f} CPU-s per step (zarr's threads, same loop)")
    for label, (cpu, seconds) in (
        ("ordinary step", ordinary),
        ("step below the threshold", explaining),
    ):
        print(
            f"  {label:25s} {cpu * 1e3:6.2f} ms CPU ({seconds * 1e3:.2f} ms wall) = "
            f"{cpu / writer:.2%} of the writer's CPU (goal <= {GOAL_MONITOR_SHARE:.0%})"
        )
    print(
        f"  inside the training loop: {wall * 1e3:.2f} ms wall, {thread_cpu * 1e3:.2f} ms CPU of "
        "the training thread a step (medians; the writer and torch's threads share the cores)"
    )
    print(f"  warned: {loop['warned'] or 'none'} (frozen-from step per parameter)")


if __name__ == "__main__":
    main()
