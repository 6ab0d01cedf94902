"""Benchmark: streaming safetensors export at the notebook's shapes vs a raw write of the disk.

Builds a 101-step recording of the notebook's fields (embeddings, grads, momentum, variance
[50257, 64] bf16, logits [50257] bf16, losses, learning_rates, grad_norms) from a bf16
random walk with small steps, unless the path of a real recording is given. Then, in one
run on the same disk: ``wordybird export`` of it in a subprocess (peak RSS read from
``RUSAGE_CHILDREN``), a raw write of the same number of bytes (8 MiB writes, fsync), the
``export_safetensors`` function in a subprocess, and a second raw write: the disk's rate
drifts with other load, so the export is compared with the mean of the two. Prints the
figures and the ratios. Everything lives in a temporary folder under /tmp, deleted at the end.

Then, on the exported file: ``wordybird.open`` and a read of the last step of every field in
a fresh process (time, peak RSS): a WB2-sized export (``--steps 1001``, 26 GB) is larger
than this machine's RAM. With ``--max-file-size SIZE``, also a split export into files of at
most SIZE (time, peak RSS, file count) and the same open-and-read on its index.

    python benchmarks/bench_export.py [RECORDING] [--steps N] [--max-file-size 4GB]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VOCAB, DIM = 50257, 64
#: The notebook's in-RAM scheme at these shapes (NOTES.md: 101 steps, stacked then saved).
NOTEBOOK_PEAK_RSS = 7.7e9
WRITE_BLOCK = 8 << 20

#: `wordybird export` run in-process after its imports, so the timing leaves out start-up.
CLI_CHILD = """
import sys, time
import wordybird.export.cli
from wordybird.cli import main
start = time.perf_counter()
main(["export", "--quiet", *sys.argv[1:]])
print(time.perf_counter() - start)
"""
#: The Python function, which leaves the caller's allocator settings alone.
FUNCTION_CHILD = """
import sys, time
from wordybird.export import export_safetensors
start = time.perf_counter()
export_safetensors(*sys.argv[1:])
print(time.perf_counter() - start)
"""
IMPORTS_CHILD = "import wordybird.export.writer"
#: Open an export and read the last step of every field; prints seconds and the step count.
OPEN_CHILD = """
import sys, time
import wordybird
start = time.perf_counter()
with wordybird.open(sys.argv[1]) as rec:
    for field in rec.fields:
        rec[field].numpy(-1)
    print(time.perf_counter() - start, len(rec))
"""


def build_recording(path: Path, steps: int) -> None:
    """A training-like recording: embeddings and optimizer state drift slowly, bf16."""
    from wordybird import StreamingRecorder

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(VOCAB, DIM, generator=g) * 0.02
    momentum = torch.zeros(VOCAB, DIM)
    variance = torch.zeros(VOCAB, DIM)
    logits = torch.zeros(VOCAB)
    metadata = {
        "learning_rate": 6e-4,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "n_trained": 12805,
        "n_untrained": VOCAB - 12805,
        "starting_step": 0,
        "benchmark": "bench_export.py synthetic random walk",
    }
    with StreamingRecorder(path, metadata=metadata) as rec:
        for step in range(steps):
            lr = 6e-4 * (1 - step / steps)
            grads = torch.randn(VOCAB, DIM, generator=g) * 1e-3 if step else torch.zeros(VOCAB, DIM)
            if step:
                momentum.mul_(0.9).add_(grads, alpha=0.1)
                variance.mul_(0.999).addcmul_(grads, grads, value=0.001)
                emb.add_(torch.randn(VOCAB, DIM, generator=g), alpha=lr)
                logits = torch.randn(VOCAB, generator=g) * 3
            loss = float("nan") if step == 0 else 10.0 - 3 * step / steps
            rec.record(
                step,
                {
                    "embeddings": emb.bfloat16(),
                    "grads": grads.bfloat16(),
                    "momentum": momentum.bfloat16(),
                    "variance": variance.bfloat16(),
                    "logits": logits.bfloat16(),
                    "losses": torch.tensor(loss).bfloat16(),
                    "learning_rates": torch.tensor(lr, dtype=torch.float32),
                    "grad_norms": grads.norm(),
                },
            )


def raw_write(path: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` of incompressible data and fsync them."""
    block = memoryview(os.urandom(WRITE_BLOCK))
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        while left:
            left -= os.write(fd, block[: min(left, WRITE_BLOCK)])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def child_peak_rss(code: str, *args: str) -> tuple[str, int]:
    """Run Python ``code`` in a fresh process; its stdout and its peak RSS in bytes.

    RUSAGE_CHILDREN reports the largest child so far, so each measurement runs from a
    fresh intermediate process that has waited for only that one child.
    """
    probe = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout\n"
        "print(out.strip()); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    *output, kib = result.stdout.strip().splitlines()
    return "\n".join(output), int(kib) * 1024


def inspect_wall(path: Path) -> float:
    """Seconds of a whole ``wordybird inspect`` process, start-up included (what users wait)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "wordybird.cli", "inspect", str(path)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", nargs="?", help="a real recording to export instead")
    parser.add_argument("--steps", type=int, default=101, help="steps of the synthetic run")
    parser.add_argument("--max-file-size", help="also measure a split export (e.g. 4GB)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="wordybird-bench-export-", dir="/tmp"))
    try:
        if args.recording:
            source = Path(args.recording)
        else:
            source = work / "run.zarr"
            start = time.perf_counter()
            build_recording(source, args.steps)
            print(f"built {args.steps}-step recording in {time.perf_counter() - start:.1f} s")
        out = work / "export.safetensors"

        _, imports_rss = child_peak_rss(IMPORTS_CHILD)
        # The disk's rate drifts with other load: measure a raw write right before and right
        # after the export, and compare with their mean.
        seconds, export_rss = child_peak_rss(CLI_CHILD, str(source), str(out))
        export_s = float(seconds.splitlines()[-1])
        size = out.stat().st_size
        opened, open_rss = child_peak_rss(OPEN_CHILD, str(out))
        inspect_s = {
            kind: min(inspect_wall(p) for _ in range(3))
            for kind, p in (("store", source), ("exported file", out))
        }
        out.unlink()
        raw_s = [raw_write(work / "raw.bin", size)]
        (work / "raw.bin").unlink()
        seconds, function_rss = child_peak_rss(FUNCTION_CHILD, str(source), str(out))
        function_s = float(seconds)
        out.unlink()
        raw_s.append(raw_write(work / "raw.bin", size))
        (work / "raw.bin").unlink()

        export_rate = size / export_s
        raw_rate = sum(size / s for s in raw_s) / len(raw_s)
        raws = ", ".join(f"{s:.2f} s" for s in raw_s)
        print(f"file size:            {size:,} bytes")
        print(f"wordybird export:     {export_s:.2f} s  ({export_rate / 1e6:.0f} MB/s)")
        print(f"raw write + fsync:    {raws}  (mean {raw_rate / 1e6:.0f} MB/s)")
        print(f"throughput ratio:     {export_rate / raw_rate:.2f} of a raw write (target >= 0.5)")
        print(f"export peak RSS:      {export_rss / 1e6:.0f} MB (target <= 120 MB)")
        print(f"  of which imports:   {imports_rss / 1e6:.0f} MB (python, numpy, zarr; no torch)")
        print(
            f"export_safetensors(): {function_s:.2f} s ({size / function_s / 1e6:.0f} MB/s), "
            f"peak RSS {function_rss / 1e6:.0f} MB (allocator not tuned, unlike the CLI)"
        )
        print(
            f"notebook scheme:      {NOTEBOOK_PEAK_RSS / 1e9:.1f} GB peak RSS -> "
            f"{NOTEBOOK_PEAK_RSS / export_rss:.0f}x less memory"
        )
        open_s, count = opened.split()
        print(
            f"open + last step:     {float(open_s):.2f} s, peak RSS {open_rss / 1e6:.0f} MB "
            f"({count} steps, file {size / 1e9:.2f} GB)"
        )
        for kind, seconds in inspect_s.items():
            print(
                f"wordybird inspect:    {seconds:.2f} s wall on the {kind} (best of 3, whole "
                "process; target <= 0.6 s)"
            )
        if args.max_file_size:
            split_out = work / "split" / "export.safetensors"
            split_out.parent.mkdir()
            seconds, split_rss = child_peak_rss(
                CLI_CHILD, str(source), str(split_out), "--max-file-size", args.max_file_size
            )
            split_s = float(seconds.splitlines()[-1])
            files = sorted(split_out.parent.glob("export-*.safetensors"))
            largest = max(f.stat().st_size for f in files)
            print(
                f"split export:         {split_s:.2f} s ({size / split_s / 1e6:.0f} MB/s), "
                f"peak RSS {split_rss / 1e6:.0f} MB, {len(files)} files, largest "
                f"{largest / 1e9:.2f} GB (limit {args.max_file_size})"
            )
            opened, open_rss = child_peak_rss(OPEN_CHILD, str(split_out))
            open_s, count = opened.split()
            print(
                f"open split + last:    {float(open_s):.2f} s, peak RSS {open_rss / 1e6:.0f} MB "
                f"({count} steps)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
