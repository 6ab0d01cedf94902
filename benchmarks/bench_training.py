"""Training speed and recording cost at the notebook's configuration, side by side.

1. One optimizer step (forward, backward, clip, AdamW) at batch 32 x 128 tokens on the
   Wordybird model: bf16 parameters computed in fp32 (what ``wordybird train`` does on CPU)
   vs the same model with fp32 parameters. Goal: <= 1.3x.
2. ``wordybird train`` seconds/step with every-step recording vs ``--no-record``.
   Goal: <= 1.10x.
3. The compression the recorder reached on that recorded run: raw bytes / bytes on disk,
   per field and overall.
4. Peak RSS of a real ``wordybird train`` process (the command users run, default WB1
   settings) with every step recorded and with ``--no-record``, at each ``--rss-steps``
   length: what recording costs in memory where users live. Goal: <= 300 MB more
   (stretch: 150 MB), flat in the number of steps.

Run: ``python benchmarks/bench_training.py [--steps 6] [--batch-size 32] [--rss-steps 20,100]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import wordybird
from _common import peak_rss_of
from wordybird.training.experiments import TrainConfig, train
from wordybird.training.model import ModelConfig, build_model, compute_in


def step_times(batch: int, steps: int) -> dict[torch.dtype, float]:
    """Median wall time of one full optimizer step, per parameter dtype.

    The two models take turns step by step, so load from other processes on a shared
    machine hits both alike; the first (warm-up) step of each is dropped.
    """
    config = ModelConfig()
    ids = torch.randint(config.vocab_size, (batch, config.n_positions + 1))
    runs = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = compute_in(build_model(config, seed=42, param_dtype=dtype), torch.float32)
        runs[dtype] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0))
    times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in runs}
    for _ in range(steps + 1):
        for dtype, (model, optimizer) in runs.items():
            start = time.perf_counter()
            loss = model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            times[dtype].append(time.perf_counter() - start)
    return {dtype: statistics.median(t[1:]) for dtype, t in times.items()}


def train_peak_rss(steps: int, *, record: bool, out: Path) -> int:
    """Peak RSS in bytes of one ``wordybird train`` process, read from its own rusage."""
    command = [sys.executable, "-m", "wordybird.cli", "train", "--steps", str(steps)]
    command += ["--out", str(out), "--overwrite", *([] if record else ["--no-record"])]
    return peak_rss_of(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--rss-steps", default="20,100", help="run lengths for the peak-RSS comparison"
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    print(f"== one optimizer step, batch {args.batch_size} x 128 (median of {args.steps})")
    times = step_times(args.batch_size, args.steps)
    bf16, fp32 = times[torch.bfloat16], times[torch.float32]
    print(f"  bf16 params, fp32 compute: {bf16:.3f} s/step")
    print(f"  fp32 params:               {fp32:.3f} s/step")
    print(f"  ratio bf16/fp32:           {bf16 / fp32:.2f}x  (goal <= 1.30x)")

    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(steps=args.steps, batch_size=args.batch_size)
        recorded = train(base, Path(tmp) / "recorded")
        plain = train(TrainConfig(**{**base.__dict__, "record_every": None}), Path(tmp) / "plain")
        print(f"== wordybird train, {args.steps} steps, batch {args.batch_size}")
        print(f"  recording every step: {recorded.seconds_per_step:.3f} s/step")
        print(f"  --no-record:          {plain.seconds_per_step:.3f} s/step")
        ratio = recorded.seconds_per_step / plain.seconds_per_step
        print(f"  ratio:                {ratio:.2f}x  (goal <= 1.10x)")

        print("== compression reached on the recorded run")
        raw_total = disk_total = 0
        with wordybird.open(Path(tmp) / "recorded" / "recording.zarr") as rec:
            for field in rec.fields:
                itemsize = torch.empty(0, dtype=rec.dtype(field)).element_size()
                raw = len(rec) * int(np.prod(rec.step_shape(field), dtype=np.int64)) * itemsize
                disk = rec.nbytes_on_disk(field)
                raw_total += raw
                disk_total += disk
                print(
                    f"  {field:14s} {raw / 1e6:9.1f} MB raw {disk / 1e6:9.1f} MB {raw / disk:5.2f}x"
                )
        print(
            f"  {'overall':14s} {raw_total / 1e6:9.1f} MB raw {disk_total / 1e6:9.1f} MB "
            f"{raw_total / disk_total:5.2f}x"
        )

        print("== peak RSS of `wordybird train` (default WB1 settings), recorded vs --no-record")
        for steps in (int(n) for n in args.rss_steps.split(",")):
            plain_rss = train_peak_rss(steps, record=False, out=Path(tmp) / "rss")
            recorded_rss = train_peak_rss(steps, record=True, out=Path(tmp) / "rss")
            print(
                f"  {steps:5d} steps: --no-record {plain_rss / 1e6:7.0f} MB, recording "
                f"{recorded_rss / 1e6:7.0f} MB: +{(recorded_rss - plain_rss) / 1e6:.0f} MB "
                "(goal <= +300 MB, stretch +150 MB)"
            )


if __name__ == "__main__":
    main()
