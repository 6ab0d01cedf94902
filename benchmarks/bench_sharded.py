"""Recording FSDP2-sharded parameters: gather to one writer, or every process writes its rows.

Two processes (``torchrun --nproc_per_node=2``, gloo on CPU) train a GPT-2-shaped model
whose input embedding (50,257 x 256, fp32, tied to the output layer: 51 MB) is sharded by
``fully_shard``: each process holds half its rows (25,129 and 25,128), its gradient and
AdamW state. Every step records the embedding's value, pre-clip gradient, ``exp_avg`` and
``exp_avg_sq`` (206 MB per step, 103 MB of it on each process). Runs, each its own
torchrun, taking turns:

- ``none``: no recording;
- ``gather`` (what the library ships, option a): ``wordybird.watch`` on both processes,
  a ``StreamingRecorder(queue_size=1)`` on the main one. At each step the other process
  sends its rows (``torch.distributed.gather``) into buffers on the main one, which
  snapshots the whole tensors and compresses and writes them in the background;
- ``own-rows`` (option b, a prototype that lives only here): each process snapshots its
  own rows, and a background thread of its own compresses and writes them straight into the
  shared Zarr store (arrays created by the main process, one chunk per process's rows so no
  chunk has two writers; the recorder's codecs), then marks the step done; the main
  process's thread commits the step (a ``committed`` count in the group's attributes) once
  every process has marked it: the barrier is the marks, so no collective runs outside the
  training thread. One slot of queue each, like ``queue_size=1``.

Figures per run and process: seconds per step (median after the first; forward,
backward, clip and ``optimizer.step()``, where the gather and the snapshot happen), the
whole run including the writers' last steps, and peak RSS (``ru_maxrss`` of the process).
Then the ratios against ``none``.

Run: ``python benchmarks/bench_sharded.py [--steps 12] [--repeats 1] [--runs
none,gather,own-rows]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RUNS = ("none", "gather", "own-rows")
WTE = "transformer.wte.weight"
FIELDS = ("value", "grad", "exp_avg", "exp_avg_sq")
VOCAB, DIM, BATCH, SEQ = 50257, 256, 2, 64


class OwnRowsWriter:
    """Option (b), the prototype: this process writes its rows of each field into the shared
    store in the background; the main process commits a step once every process marked it.
    """

    def __init__(self, path: Path, steps: int, rank: int, world: int) -> None:
        import torch.distributed as dist
        import zarr

        from wordybird.recorder.layout import FieldSpec, compressors_for

        self.path, self.rank, self.world = path, rank, world
        rows = math.ceil(VOCAB / world)
        self.start = rank * rows
        spec = FieldSpec(WTE, "float32", (VOCAB, DIM))
        if rank == 0:
            group = zarr.open_group(path, mode="w", zarr_format=3)
            for field in FIELDS:
                group.create_array(
                    field,
                    shape=(steps, VOCAB, DIM),
                    chunks=(1, rows, DIM),
                    dtype="float32",
                    compressors=compressors_for(spec),
                    config={"write_empty_chunks": True},
                )
            group.attrs["committed"] = 0
            (path / "marks").mkdir()
        dist.barrier()
        self.arrays = {f: zarr.open_array(path / f, mode="r+") for f in FIELDS}
        self.group = zarr.open_group(path, mode="r+") if rank == 0 else None
        self.work: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def record(self, step: int, parts: dict[str, Any]) -> None:
        snapshot = {f: t.detach().clone().numpy() for f, t in parts.items()}
        self.work.put((step, snapshot))

    def _write(self) -> None:
        while (item := self.work.get()) is not None:
            step, snapshot = item
            for field, rows in snapshot.items():
                self.arrays[field][step, self.start : self.start + len(rows)] = rows
            (self.path / "marks" / f"{step}.{self.rank}").touch()
            if self.group is not None:
                marks = [self.path / "marks" / f"{step}.{r}" for r in range(self.world)]
                while not all(m.exists() for m in marks):
                    time.sleep(0.001)
                self.group.attrs["committed"] = step + 1

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()


def worker(run: str, steps: int, out: Path) -> None:
    """One process of one run: train ``steps`` steps, recording as ``run`` says; write this
    process's figures to ``out/figures-RANK.json``."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2LMHeadModel

    import wordybird

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=DIM, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(VOCAB, (steps * BATCH * world, SEQ), generator=torch.Generator())
    param = dict(model.named_parameters())[WTE]
    watch = own = None
    if run == "gather":
        recorder = (
            wordybird.StreamingRecorder(out / "rec.zarr", queue_size=1) if rank == 0 else None
        )
        watch = wordybird.watch(model, optimizer, recorder, parameters=[WTE])
    elif run == "own-rows":
        own = OwnRowsWriter(out / "rec.zarr", steps, rank, world)
    dist.barrier()
    begin = time.perf_counter()
    step_times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = tokens[(step * world + rank) * BATCH :][:BATCH]
        model(input_ids=batch, labels=batch).loss.backward()
        grad = param.grad.to_local().clone() if own is not None else None  # pre-clip
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if own is not None:
            state = optimizer.state[param]
            parts = {"value": param.to_local(), "grad": grad}
            parts |= {k: state[k].to_local() for k in ("exp_avg", "exp_avg_sq")}
            own.record(step, parts)
            del grad
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - start)
    if watch is not None:
        watch.close()
    if own is not None:
        own.close()
    dist.barrier()  # every writer done: the run's end is the last process's
    figures = {
        "step_s": statistics.median(step_times[1:]),
        "run_s": time.perf_counter() - begin,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    (out / f"figures-{rank}.json").write_text(json.dumps(figures))
    dist.destroy_process_group()  # else gloo's threads can abort the exit


def spawn(run: str, steps: int, tmp: Path) -> list[dict[str, float]]:
    """One torchrun of ``run``: each process's figures, by rank."""
    out = tmp / run
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    torchrun = shutil.which("torchrun") or sys.exit("torchrun is not on PATH")
    command = [torchrun, "--standalone", "--nproc_per_node=2", __file__]
    command += ["--worker", run, "--steps", str(steps), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{run} failed:\n{result.stderr[-3000:]}")
    return [json.loads((out / f"figures-{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1, help="turns of every run")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, in turn order")
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.out)
        return
    runs = args.runs.split(",")
    results: dict[str, list[list[dict[str, float]]]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory(prefix="bench-sharded-") as tmp:
        for turn in range(args.repeats):
            for run in runs:
                results[run].append(spawn(run, args.steps, Path(tmp)))
                print(f"turn {turn + 1}: {run} done", flush=True)

    def median(run: str, rank: int, key: str) -> float:
        return statistics.median(turn[rank][key] for turn in results[run])

    step_mb = VOCAB * DIM * 4 * len(FIELDS) / 1e6
    print(f"\n{args.steps} steps, {step_mb:.0f} MB recorded per step, medians of {args.repeats}")
    print("| run | s/step | run s | peak RSS rank 0 | peak RSS rank 1 |")
    print("|---|---|---|---|---|")
    for run in runs:
        step = max(median(run, r, "step_s") for r in range(2))
        whole = max(median(run, r, "run_s") for r in range(2))
        rss = [median(run, r, "peak_rss") / 1e6 for r in range(2)]
        print(f"| {run} | {step:.3f} | {whole:.1f} | {rss[0]:.0f} MB | {rss[1]:.0f} MB |")
    if "none" in runs:
        print("\nagainst none: s/step, run, RSS growth rank 0 / rank 1")
        for run in (r for r in runs if r != "none"):
            ratio = [
                max(median(run, r, k) for r in range(2))
                / max(median("none", r, k) for r in range(2))
                for k in ("step_s", "run_s")
            ]
            growth = [
                (median(run, r, "peak_rss") - median("none", r, "peak_rss")) / 1e6 for r in range(2)
            ]
            print(
                f"{run}: {ratio[0]:.2f}x per step, {ratio[1]:.2f}x run, "
                f"+{growth[0]:.0f} MB / +{growth[1]:.0f} MB"
            )


if __name__ == "__main__":
    main()
