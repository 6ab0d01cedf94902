"""Peak memory of each process of `wordybird train` run as two processes (torchrun).

Goal (issue 10): only the main process records; the other one adds no memory beyond one
step's snapshot, i.e. none at all, as it has no recorder. Measured: each process's own peak
RSS in a recorded run and in the same run with --no-record, at the notebook's shapes
(vocabulary 50257 × 64, global batch 32 = 16 per process, sequence 128), and one process's
for comparison (``peak_rss_of``). Prints the figures and the differences.

Run: ``python benchmarks/bench_processes.py [STEPS]`` (default 10 steps).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import peak_rss_of

#: Set in the processes torchrun starts: they run wordybird's CLI and write their peak RSS
#: (bytes) to RSS_DIR/rank-RANK.
RSS_DIR = "BENCH_PROCESSES_RSS_DIR"


def as_one_process_of_the_run() -> None:
    """Run ``wordybird`` with this script's arguments, then note this process's peak RSS."""
    from wordybird.cli import main

    try:
        main(sys.argv[1:])
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        rank = os.environ.get("RANK", "0")
        Path(os.environ[RSS_DIR], f"rank-{rank}").write_text(str(peak))


def two_processes(args: list[str], folder: Path) -> list[int]:
    """Each process's peak RSS (bytes, by rank) of ``wordybird ARGS`` under torchrun."""
    folder.mkdir()
    torchrun = shutil.which("torchrun") or sys.exit("torchrun is not on PATH")
    command = [torchrun, "--standalone", "--nproc_per_node=2", __file__, *args]
    env = {**os.environ, RSS_DIR: str(folder), "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    return [int((folder / f"rank-{rank}").read_text()) for rank in (0, 1)]


def main() -> None:
    steps = sys.argv[1] if len(sys.argv) > 1 else "10"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = ["train", "--steps", steps, "--batch-size", "32", "--out"]
        recorded = two_processes([*run, str(root / "rec")], root / "rss-rec")
        unrecorded = two_processes([*run, str(root / "norec"), "--no-record"], root / "rss-no")
        wordybird = str(Path(sys.executable).with_name("wordybird"))
        one = peak_rss_of([wordybird, *run, str(root / "one")])
        one_unrecorded = peak_rss_of([wordybird, *run, str(root / "one-no"), "--no-record"])
    mb = 1e6
    print(f"wordybird train, {steps} steps, notebook shapes, global batch 32; peak RSS in MB")
    print(f"{'':26}{'recorded':>10}{'--no-record':>13}{'difference':>12}")
    rows = [
        ("two processes, rank 0", recorded[0], unrecorded[0]),
        ("two processes, rank 1", recorded[1], unrecorded[1]),
        ("one process", one, one_unrecorded),
    ]
    for label, a, b in rows:
        print(f"{label:26}{a / mb:>10.0f}{b / mb:>13.0f}{(a - b) / mb:>+12.0f}")
    print(f"rank 0 - rank 1, recorded: {(recorded[0] - recorded[1]) / mb:+.0f} MB")


if __name__ == "__main__":
    if RSS_DIR in os.environ:
        as_one_process_of_the_run()
    else:
        main()
