"""The streaming recorder at the notebook's shapes: throughput, memory, compression, reads.

One step is 4 × [50257, 64] bf16 (embeddings, grads, momentum, variance) + [50257] bf16
logits + a bf16 loss = 25.7 MB. The notebook held every step in RAM (+7.7 GB peak RSS at
101 steps); the recorder must stream instead. Four measurements, all printed with ratios:

1. throughput: tensor bytes per second from the first ``record()`` until ``close()``
   returns (goal ≥ 180 MB/s), next to the codec's own one-core speed on the same bytes;
2. peak RSS growth over a fresh process's baseline, for 100 and 1000 steps (goal
   ≤ 300 MB and flat in the number of steps);
3. lossless compression ratio per field, default vs compact mode, on real tensors
   (goals ≥ 1.8× and ≥ 2.5× overall);
4. latency and bytes read to fetch one step of ``embeddings`` from a fresh ``open``.

Run: ``python benchmarks/bench_recorder.py [--recording PATH] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import wordybird
from _common import (
    MATRIX_FIELDS,
    NOTEBOOK_PEAK_RSS_GROWTH,
    Step,
    TensorSource,
    bits_of,
    chunks_as_stored,
    numcodecs_blosc,
    step_nbytes,
    synthetic_walk,
    tensor_source,
    time_compress,
)
from wordybird import StreamingRecorder
from wordybird.dtypes import from_torch
from wordybird.recorder.delta import delta_encode
from wordybird.recorder.layout import MODES, compressors_for, field_specs_for

THROUGHPUT_GOAL = 180e6
RSS_GOAL = 300e6
RATIO_GOALS = {"default": 1.8, "compact": 2.5}
#: Distinct synthetic steps held in memory and cycled through (inputs are built up front,
#: and 1000 distinct steps would need 25.7 GB).
DISTINCT_STEPS = 8
#: Positions read in the latency test: a keyframe, the end of a keyframe interval (the
#: worst case in compact mode), and two others.
LATENCY_POSITIONS = (0, 15, 50, 99)


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def record(path: Path, inputs: Sequence[Step], n_steps: int, mode: str) -> float:
    """Record ``n_steps`` steps cycling through ``inputs``; seconds from first record to close."""
    recorder = StreamingRecorder(path, mode=mode, overwrite=True)
    start = time.perf_counter()
    for i in range(n_steps):
        recorder.record(i, inputs[i % len(inputs)])
    recorder.close()
    return time.perf_counter() - start


def store_nbytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- 1. throughput ------------------------------------------------------------------------


def codec_speed(inputs: Sequence[Step], mode: str) -> float:
    """One core's MB/s for format.py's codecs on the large fields, as the recorder feeds them.

    Compact mode compresses deltas between steps, so they are measured on two steps' delta.
    """
    arrays = {name: from_torch(inputs[0][name]) for name in MATRIX_FIELDS}
    specs = field_specs_for(arrays, mode)  # type: ignore[arg-type]
    raw, seconds = 0, 0.0
    for name, spec in specs.items():
        codec = numcodecs_blosc(compressors_for(spec)[0])
        bits = bits_of(inputs[1][name])
        if spec.encoding == "delta":
            bits = delta_encode(bits, bits_of(inputs[0][name]))
        chunks = chunks_as_stored(name, bits)
        _, speed = time_compress(codec, chunks)
        raw += bits.nbytes
        seconds += bits.nbytes / speed
    return raw / seconds


def bench_throughput(workdir: Path, inputs: Sequence[Step], n_steps: int, repeats: int) -> dict:
    """Throughput per mode; leaves one ``n_steps`` store per mode for the latency test."""
    per_step = step_nbytes(inputs[0])
    print(f"\n== 1. throughput: {n_steps} steps × {mb(per_step)}, {repeats} run(s) per mode ==")
    stores = {}
    for mode in MODES:
        path = workdir / f"throughput-{mode}.zarr"
        speeds = sorted(
            per_step * n_steps / record(path, inputs, n_steps, mode) for _ in range(repeats)
        )
        stores[mode] = path
        codec = codec_speed(inputs, mode)
        best, median = speeds[-1], statistics.median(speeds)
        ok = "meets" if best >= THROUGHPUT_GOAL else "MISSES"
        print(
            f"{mode:8s} recorder: best {best / 1e6:6.0f} MB/s, median {median / 1e6:6.0f} MB/s "
            f"(runs: {', '.join(f'{s / 1e6:.0f}' for s in speeds)}) — {ok} the 180 MB/s goal"
        )
        print(
            f"{'':8s} codec alone, one core ({'deltas' if mode == 'compact' else 'values'}): "
            f"{codec / 1e6:6.0f} MB/s → recorder/codec = {best / codec:.2f}×; "
            f"store {mb(store_nbytes(path))} for {mb(per_step * n_steps)} raw"
        )
    return stores


# -- 2. peak RSS ----------------------------------------------------------------------------


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_child(workdir: Path, n_steps: int, mode: str) -> None:
    """In a fresh process: baseline after imports and inputs, then record; print JSON.

    The kernel's peak-RSS mark (VmHWM) is reset just before the recorder starts, so the
    input generation's own transient peak does not hide the recorder's.
    """
    inputs = synthetic_walk(DISTINCT_STEPS // 2)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    baseline = _proc_status_bytes("VmRSS")
    path = workdir / f"rss-{mode}-{n_steps}.zarr"
    seconds = record(path, inputs, n_steps, mode)
    peak = _proc_status_bytes("VmHWM")
    on_disk = store_nbytes(path)
    shutil.rmtree(path)
    print(
        json.dumps(
            {
                "baseline": baseline,
                "peak": peak,
                "seconds": seconds,
                "raw": step_nbytes(inputs[0]) * n_steps,
                "on_disk": on_disk,
            }
        )
    )


def bench_rss(workdir: Path, runs: Sequence[tuple[str, int]], disk_per_step: float) -> None:
    print("\n== 3. peak RSS growth over the baseline (fresh process per run) ==")
    growths = {}
    for mode, n_steps in runs:
        need = disk_per_step * n_steps * 1.2
        free = shutil.disk_usage(workdir).free
        if free < need:
            print(f"{mode} {n_steps} steps: SKIPPED, needs ~{mb(need)} on disk, {mb(free)} free")
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(n_steps), mode, "--workdir", workdir],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        growth = r["peak"] - r["baseline"]
        growths[mode, n_steps] = growth
        ok = "meets" if growth <= RSS_GOAL else "MISSES"
        print(
            f"{mode:8s} {n_steps:5d} steps: +{mb(growth)} peak over baseline {mb(r['baseline'])} "
            f"({ok} ≤ 300 MB); {mb(r['raw'])} raw → {mb(r['on_disk'])} on disk in "
            f"{r['seconds']:.0f} s ({r['raw'] / r['seconds'] / 1e6:.0f} MB/s)"
        )
    default = sorted((n, g) for (mode, n), g in growths.items() if mode == "default")
    if default:
        n, g = default[0]
        print(
            f"notebook's in-RAM scheme: +{mb(NOTEBOOK_PEAK_RSS_GROWTH)} at 101 steps → "
            f"{NOTEBOOK_PEAK_RSS_GROWTH / g:.0f}× the recorder's growth at {n} steps"
        )
    if len(default) > 1:
        (n0, g0), (n1, g1) = default[0], default[-1]
        print(f"growth at {n1} steps / at {n0} steps = {g1 / g0:.2f} (flat ≈ 1)")


# -- 3. compression ratio ------------------------------------------------------------------


def bench_ratio(workdir: Path, source: TensorSource) -> None:
    print(f"\n== 4. compression ratio, lossless, on {source.label} ==")
    on_disk: dict[str, dict[str, int]] = {}
    raw: dict[str, int] = {}
    for mode in MODES:
        path = workdir / f"ratio-{mode}.zarr"
        with StreamingRecorder(path, mode=mode, overwrite=True) as recorder:
            for i, step in enumerate(source):
                recorder.record(i, step)
        rec = wordybird.open(path)
        on_disk[mode] = {}
        for field in rec.fields:
            raw[field] = int(np.prod(rec[field].shape)) * rec.dtype(field).itemsize
            on_disk[mode][field] = rec.nbytes_on_disk(field)
        shutil.rmtree(path)
    total_raw = sum(raw.values())
    print(f"{'field':12s} {'raw':>12s} {'default':>9s} {'compact':>9s}")
    for field in raw:
        cells = "".join(f" {raw[field] / on_disk[m][field]:8.2f}×" for m in MODES)
        print(f"{field:12s} {mb(raw[field]):>12s}{cells}")
    overall = {m: total_raw / sum(on_disk[m].values()) for m in MODES}
    print(f"{'overall':12s} {mb(total_raw):>12s}" + "".join(f" {overall[m]:8.2f}×" for m in MODES))
    for mode in MODES:
        ok = "meets" if overall[mode] >= RATIO_GOALS[mode] else "MISSES"
        print(f"{mode}: {overall[mode]:.2f}× {ok} the {RATIO_GOALS[mode]}× goal")


# -- 4. reading one step -------------------------------------------------------------------


def _rchar() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("rchar not in /proc/self/io")


def bench_read(stores: dict[str, Path]) -> None:
    print("\n== 2. one step of embeddings from a fresh wordybird.open ==")
    for mode, path in stores.items():
        rec = wordybird.open(path)
        n = len(rec)
        step_raw = rec["embeddings"][0].numel() * 2
        per_step_disk = rec.nbytes_on_disk("embeddings") / n
        print(
            f"{mode}: {n} steps; one step is {mb(step_raw)} raw, "
            f"{mb(per_step_disk)} of chunk files on average"
        )
        for k in (k for k in LATENCY_POSITIONS if k < n):
            start = time.perf_counter()
            rec = wordybird.open(path)
            opened = time.perf_counter()
            read_before = _rchar()
            rec["embeddings"][k]
            done = time.perf_counter()
            read = _rchar() - read_before
            print(
                f"  position {k:3d}: open {1e3 * (opened - start):5.1f} ms, read "
                f"{1e3 * (done - opened):6.1f} ms, {mb(read)} read "
                f"({read / per_step_disk:.1f}× one step's chunks)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recording", type=Path, help="a recording whose steps to re-record")
    parser.add_argument("--quick", action="store_true", help="fewer steps (30/300), one run")
    parser.add_argument("--workdir", type=Path, help="where stores go (default: a temp dir)")
    parser.add_argument("--rss-child", nargs=2, metavar=("STEPS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.workdir, int(args.rss_child[0]), args.rss_child[1])
        return
    n_steps, repeats, rss_steps = (30, 1, (30, 300)) if args.quick else (100, 3, (100, 1000))
    with tempfile.TemporaryDirectory(prefix="bench_recorder-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        inputs = synthetic_walk(DISTINCT_STEPS)
        stores = bench_throughput(workdir, inputs, n_steps, repeats)
        bench_read(stores)
        disk_per_step = store_nbytes(stores["default"]) / n_steps
        del inputs
        for path in stores.values():
            shutil.rmtree(path)
        gc.collect()
        runs = [("default", rss_steps[0]), ("default", rss_steps[1]), ("compact", rss_steps[0])]
        bench_rss(workdir, runs, disk_per_step)
        bench_ratio(workdir, tensor_source(args.recording, 10 if args.quick else 100, workdir))


if __name__ == "__main__":
    main()
