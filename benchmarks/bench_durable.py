"""What ``durable=True`` costs: the same steps recorded with and without fsync, in one run.

A step is the notebook's: 4 × [50257, 64] bf16 (embeddings, grads, momentum, variance) +
[50257] bf16 logits + a bf16 loss = 25.7 MB of synthetic random-walk bf16 (compresses
like real tensors; see _common.synthetic_walk). Durable mode fsyncs every file before its
rename and a step's folders before the header that commits it (FORMAT.md, "What each mode
promises"). Runs alternate between the two settings so that both see the same machine
state; the median of each is compared.

Run: ``python benchmarks/bench_durable.py [--steps 30] [--repeats 3] [--mode default]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import Step, step_nbytes, synthetic_walk
from wordybird import StreamingRecorder

#: Distinct synthetic steps held in memory and cycled through (25.7 MB each).
DISTINCT_STEPS = 4


def seconds_per_step(path: Path, inputs: Sequence[Step], n_steps: int, **options: object) -> float:
    """Record ``n_steps`` steps; seconds per step from the first record() until close()."""
    recorder = StreamingRecorder(path, overwrite=True, **options)
    start = time.perf_counter()
    for i in range(n_steps):
        recorder.record(i, inputs[i % len(inputs)])
    recorder.close()
    elapsed = time.perf_counter() - start
    shutil.rmtree(path)
    return elapsed / n_steps


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per recording")
    parser.add_argument("--repeats", type=int, default=3, help="recordings per setting")
    parser.add_argument("--mode", choices=["default", "compact"], default="default")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to record (default: a temp folder)"
    )
    args = parser.parse_args(argv)

    inputs = synthetic_walk(DISTINCT_STEPS)
    per_step = step_nbytes(inputs[0])
    print(
        f"{args.steps} steps × {per_step / 1e6:.1f} MB, {args.mode} mode, "
        f"{args.repeats} alternating run(s) per setting"
    )
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for _ in range(args.repeats):
            for durable in (False, True):
                path = Path(tmp) / f"durable-{durable}.zarr"
                times[durable].append(
                    seconds_per_step(path, inputs, args.steps, mode=args.mode, durable=durable)
                )
    for durable, runs in times.items():
        median = statistics.median(runs)
        print(
            f"durable={durable!s:5s}: {median * 1e3:7.1f} ms/step median "
            f"({per_step / median / 1e6:5.0f} MB/s; runs: "
            f"{', '.join(f'{t * 1e3:.1f}' for t in runs)} ms)"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"durable / not durable = {ratio:.2f}×")


if __name__ == "__main__":
    main()
