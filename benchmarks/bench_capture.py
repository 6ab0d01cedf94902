"""Recording a GPT-2-small-shaped model's input embedding every step of a plain loop.

The model is ``GPT2LMHeadModel(GPT2Config())``: 124M parameters, random init, built from
the config offline (``n_positions`` cut to the sequence length). Its parameters are bf16,
computed in fp32 (``compute_in``), as ``wordybird train`` runs the Wordybird model on CPU:
the recorded tensors are the bf16 ones a user of this project records, and an fp32 forward
is ~12x faster than a bf16 one on this CPU. The loop is a plain one (forward, backward,
clip, ``torch.optim.AdamW``), recorded by ``wordybird.watch``: the path a nanoGPT-style
loop takes, with nothing of the Trainer's own per-step cost in the comparison.

Runs, each in its own process (peak RSS is that process's own, from ``os.wait4``), taking
turns so that load from other processes hits each alike:

- ``none``: no recording;
- ``watch``: ``transformer.wte.weight`` (50,257 x 768) recorded every step with its value,
  pre-clip gradient, ``exp_avg``, ``exp_avg_sq``, ``step`` and learning rate, into a
  ``StreamingRecorder`` with its defaults (``queue_size=2``: 3 snapshot buffer sets);
- ``watch-q1``: the same with ``queue_size=1`` (2 buffer sets): the setting for big steps;
- ``watch-q1-every2``: that, recording every other step (``record_every=2``).

Figures per run: seconds per step (median over the steps after the first; forward,
backward and clip + ``optimizer.step()``, where watch's hooks and ``record()`` run), the
whole run including the recorder's ``close()`` (which writes the steps still queued), the
process's CPU seconds and those of the threads that compress and write, and peak RSS. Then,
against ``none``: the overhead (per step, whole run, CPU), the raw MB/s recorded, one step's
snapshot size and the RSS growth. Goals: overhead <= 1.10x; RSS growth <= 2 x one step's
snapshot + 200 MB. On a shared machine the wall times move with other load (run
``--repeats 3``); the CPU seconds move much less.

Run: ``python benchmarks/bench_capture.py [--steps 20] [--batch 4] [--seq 128]
[--repeats 1] [--runs none,watch,watch-q1,watch-q1-every2]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import peak_rss_of, writer_cpu_seconds

#: The recorded parameter: GPT-2's input embedding (tied to the output layer).
WTE = "transformer.wte.weight"
#: Each run's StreamingRecorder and watch options (None: no recording).
RUNS: dict[str, dict[str, dict[str, Any]] | None] = {
    "none": None,
    "watch": {"recorder": {}, "watch": {}},
    "watch-q1": {"recorder": {"queue_size": 1}, "watch": {}},
    "watch-q1-every2": {"recorder": {"queue_size": 1}, "watch": {"record_every": 2}},
}
GOAL_OVERHEAD = 1.10
GOAL_RSS_SLACK = 200e6


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread's (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(run: str, steps: int, batch: int, seq: int, out: Path) -> dict[str, Any]:
    """One training run in this process; returns its timings (RSS is read by the parent)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import wordybird
    from wordybird.training.model import compute_in

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_positions=seq)).to(torch.bfloat16)
    model = compute_in(model, torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    data = torch.randint(model.config.vocab_size, (steps, batch, seq))
    options = RUNS[run]
    watch = None
    if options is not None:
        recorder = wordybird.StreamingRecorder(out / "rec.zarr", **options["recorder"])
        watch = wordybird.watch(model, optimizer, recorder, parameters=[WTE], **options["watch"])

    times: dict[str, list[float]] = {"step": [], "forward": [], "backward": [], "opt": []}
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for i in range(steps):
        t0 = time.perf_counter()
        loss = model(input_ids=data[i], labels=data[i]).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t3 = time.perf_counter()
        optimizer.step()  # watch's hooks and record() run in here
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["backward"].append(t2 - t1)
        times["opt"].append(t4 - t3)
        times["step"].append(t4 - t0)
    trained = time.perf_counter() - start
    writer_cpu = 0.0
    if watch is not None:
        watch.close()  # writes every queued step
        writer_cpu = writer_cpu_seconds(watch.recorder)
    total, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    result: dict[str, Any] = {
        "run": run,
        "trained_s": trained,
        "total_s": total,
        "cpu_s": cpu,
        "writer_cpu_s": writer_cpu,
        "times": times,
    }
    if watch is not None:
        with wordybird.open(out / "rec.zarr") as rec:
            every = options["watch"].get("record_every", 1)
            assert rec.steps.tolist() == list(range(every, steps + 1, every))
            result["recorded_steps"] = len(rec)
            result["fields"] = sorted(rec.fields)
            result["snapshot_bytes"] = sum(
                torch.empty(rec.step_shape(f), dtype=rec.dtype(f)).nbytes for f in rec.fields
            )
            result["disk_bytes"] = rec.size_on_disk()
    return result


def spawn(run: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One run in a fresh process, reaped with ``os.wait4`` for its own peak RSS."""
    out = tmp / run
    out.mkdir(parents=True, exist_ok=True)
    result_file = out / "result.json"
    command = [sys.executable, __file__, "--worker", run, "--out", str(out)]
    command += ["--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
    peak_rss = peak_rss_of(command)
    result = json.loads(result_file.read_text())
    result["peak_rss"] = peak_rss
    return result


def median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="turns of every run")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, in turn order")
    parser.add_argument("--worker", choices=list(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker(args.worker, args.steps, args.batch, args.seq, args.out)
        (args.out / "result.json").write_text(json.dumps(result))
        return

    runs = args.runs.split(",")
    results: dict[str, list[dict[str, Any]]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for turn in range(args.repeats):
            for run in runs:
                result = spawn(run, args, Path(tmp) / f"{turn}")
                results[run].append(result)
                steps = result["times"]["step"]
                print(
                    f"  turn {turn + 1} {run:15s} {median_after_first(steps):6.2f} s/step "
                    f"(first {steps[0]:5.2f} s), {result['total_s']:6.1f} s in all, "
                    f"{result['cpu_s']:6.1f} CPU-s, peak RSS {result['peak_rss'] / 1e6:6.0f} MB",
                    flush=True,
                )

    def per_step(run: str, key: str) -> float:
        return statistics.median(median_after_first(r["times"][key]) for r in results[run])

    def whole(run: str, key: str) -> float:
        return statistics.median(r[key] for r in results[run])

    print(
        f"== GPT-2 small (124M, bf16 params, fp32 compute), batch {args.batch} x {args.seq}, "
        f"{args.steps} steps, AdamW; median of {args.repeats} turn(s)"
    )
    print(
        f"  {'run':15s} {'s/step':>7s} {'fwd':>5s} {'bwd':>5s} {'opt':>5s} {'run+close':>9s} "
        f"{'CPU-s/step':>10s} {'writer':>6s} {'peak RSS':>9s}"
    )
    for run in runs:
        print(
            f"  {run:15s} {per_step(run, 'step'):7.2f} {per_step(run, 'forward'):5.2f} "
            f"{per_step(run, 'backward'):5.2f} {per_step(run, 'opt'):5.2f} "
            f"{whole(run, 'total_s'):8.1f}s {whole(run, 'cpu_s') / args.steps:10.2f} "
            f"{whole(run, 'writer_cpu_s') / args.steps:6.2f} {whole(run, 'peak_rss') / 1e6:7.0f}MB"
        )
    print(
        "  (opt: clip + optimizer.step(), where watch's hooks and record() run; CPU-s/step: "
        "the whole process's; writer: the recorder's writer and codec threads and zarr's)"
    )
    if "none" not in runs:
        return
    for run in runs:
        if RUNS[run] is None:
            continue
        first = results[run][0]
        snapshot = first["snapshot_bytes"]
        raw = snapshot * first["recorded_steps"]
        growth = whole(run, "peak_rss") - whole("none", "peak_rss")
        limit = 2 * snapshot + GOAL_RSS_SLACK
        fields = ", ".join(f.removeprefix(WTE + "/") for f in first["fields"])
        options = {k: v for part in RUNS[run].values() for k, v in part.items()}
        print(f"== {run} ({options or 'defaults'}) against none")
        print(f"  one step's snapshot {snapshot / 1e6:.1f} MB ({fields})")
        print(
            f"  overhead: per step {per_step(run, 'step') / per_step('none', 'step'):.2f}x, "
            f"whole run with close {whole(run, 'total_s') / whole('none', 'total_s'):.2f}x, "
            f"CPU {whole(run, 'cpu_s') / whole('none', 'cpu_s'):.2f}x  (goal <= "
            f"{GOAL_OVERHEAD:.2f}x)"
        )
        print(
            f"  recorded {raw / 1e6:.0f} MB raw: {raw / whole(run, 'total_s') / 1e6:.0f} MB/s over "
            f"the run, {raw / whole(run, 'writer_cpu_s') / 1e6:.0f} MB per writer CPU-second, "
            f"{raw / first['disk_bytes']:.2f}x compressed on disk"
        )
        print(
            f"  peak RSS growth {growth / 1e6:+.0f} MB = {growth / snapshot:.2f} snapshots  "
            f"(goal <= 2 x {snapshot / 1e6:.0f} + 200 = {limit / 1e6:.0f} MB)"
        )


if __name__ == "__main__":
    main()
