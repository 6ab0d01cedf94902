"""Recording GPT-2 small's input embedding every step of a GPU training loop.

``GPT2LMHeadModel(GPT2Config())`` (124M parameters, random init, offline) on CUDA with fp32
parameters under bf16 autocast, AdamW, batch 12 × 1024, no accumulation: a plain loop, as
nanoGPT trains it. Recorded by ``wordybird.watch`` at every step: ``transformer.wte.weight``
with its pre-clip gradient and AdamW's ``exp_avg``/``exp_avg_sq`` (fp32: 618 MB a step;
``--store-dtype bfloat16`` records them as bf16, 309 MB, lossy). The recorder copies each
step into pinned host buffers with asynchronous copies, and its writer compresses on every
host core (``codec_threads`` defaults to all of them when the recorded tensors are on a GPU).

Two runs in this process, after a warm-up: none, then recording (``queue_size=1``). Printed:
seconds per step (median) with and without recording and their ratio (goal ≤ 1.05×), the
whole run including ``close()`` (a writer that falls behind moves the wait to the end), the
writer's sustained throughput (raw GB/s over the recorded run; goal ≥ 2 GB/s), its CPU, and
where training waited: in ``record()`` for a free buffer set (the writer's back-pressure) and
in the step's device-to-host copies.

Run (about 3 minutes on one H100): ``python benchmarks/bench_gpu.py [--steps 30]
[--batch 12] [--seq 1024] [--store-dtype bfloat16]``; ``--device cpu --batch 1 --seq 64
--steps 3`` checks the script on a machine without a GPU (its figures mean nothing there).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import wordybird
from wordybird.knobs import available_cores

WTE = "transformer.wte.weight"
GOAL_STEP = 1.05
GOAL_THROUGHPUT = 2e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    steps: int,
    batch: int,
    seq: int,
) -> list[float]:
    """``steps`` optimizer steps; each one's wall time, the device synchronized after it."""
    times = []
    vocab = model.config.vocab_size
    for _ in range(steps):
        data = torch.randint(vocab, (batch, seq), device=device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=data, labels=data).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()  # watch's hooks and record() run in here
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--store-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", type=Path, help="where to record (default: a temporary folder)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this benchmark needs a GPU (--device cpu checks it)")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_positions=args.seq)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"GPT-2 small on {name}, batch {args.batch} x {args.seq}, bf16 autocast, AdamW")

    train(model, optimizer, device, args.warmup, args.batch, args.seq)
    plain = train(model, optimizer, device, args.steps, args.batch, args.seq)

    store_dtype = torch.bfloat16 if args.store_dtype == "bfloat16" else None
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        out = args.out or Path(tmp) / "rec.zarr"
        recorder = wordybird.StreamingRecorder(out, queue_size=1, overwrite=True)
        watch = wordybird.watch(
            model, optimizer, recorder, parameters=[WTE], store_dtype=store_dtype, max_grad_norm=1.0
        )
        start = time.perf_counter()
        recorded = train(model, optimizer, device, args.steps, args.batch, args.seq)
        trained = time.perf_counter() - start
        watch.close()
        whole = time.perf_counter() - start
        with wordybird.open(out) as rec:
            step_bytes = sum(rec.step_nbytes(f) for f in rec.fields)
            on_disk = rec.size_on_disk()
            assert len(rec) == args.steps, (len(rec), args.steps)
        report: dict[str, Any] = {
            "plain": statistics.median(plain),
            "recorded": statistics.median(recorded),
            "trained": trained,
            "whole": whole,
            "waited": recorder.waited_seconds,
            "writer_cpu": recorder.writer_cpu_seconds,
            "raw": step_bytes * args.steps,
        }
    ratio = report["recorded"] / report["plain"]
    print(f"  one recorded step: {step_bytes / 1e6:.0f} MB ({args.store_dtype})")
    print(
        f"  s/step: none {report['plain']:.3f}, recording {report['recorded']:.3f} = "
        f"{ratio:.3f}x (goal <= {GOAL_STEP})"
    )
    print(
        f"  whole run incl. close(): {report['whole']:.1f} s against "
        f"{sum(plain):.1f} s unrecorded = {report['whole'] / sum(plain):.3f}x"
    )
    rate = report["raw"] / report["whole"]
    print(
        f"  writer: {rate / 1e9:.2f} GB/s sustained (goal >= {GOAL_THROUGHPUT / 1e9:.0f}), "
        f"{report['writer_cpu'] / args.steps:.2f} CPU-s a step on "
        f"{available_cores()} cores, {report['raw'] / on_disk:.2f}x on disk"
    )
    print(
        f"  training waited for the writer {report['waited']:.2f} s in record() "
        f"({report['waited'] / args.steps * 1e3:.0f} ms a step), and for close() "
        f"{report['whole'] - report['trained']:.2f} s"
    )


if __name__ == "__main__":
    main()
