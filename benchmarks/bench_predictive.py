"""Predictive mode against default and compact, on a real WB1 recording, in one run.

1. Compression of every step of the recording re-recorded in each mode: ratio per field,
   the overall ratio of the four big fields (goal >= 8x in predictive mode), and at
   positions 30/60/90 the order-0 entropy (bits/value) of what each mode stores (values,
   ULP deltas from the previous step, ULP residuals from the prediction), with the share
   of values predicted exactly.
2. Recording throughput: the first 32 steps (two keyframe runs) held in RAM, recorded in
   each mode (goal >= 180 MB/s of raw input in predictive mode).
3. One random step of ``embeddings`` after a fresh open (goal <= 300 ms), per mode.
4. A full sequential export of each store (goal: predictive <= 1.5x default).
5. ``wordybird train`` recording in default and predictive mode vs ``--no-record``, three
   alternating rounds (goal: predictive <= 1.10x, medians).
6. With ``--wb2 PATH``: the size of a real WB2 (1001-step) run re-recorded in each mode
   (needs ~14 GB of free disk; ~12 min).

Run: ``python benchmarks/bench_predictive.py --recording runs/wb1/recording.zarr
[--train-steps 30] [--reads 16] [--wb2 runs/wb2/recording.zarr]`` (``wordybird train``
writes the first recording in ~5 min, ``wordybird train --steps 1000 --out runs/wb2 --mode
predictive`` the second in ~45 min).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import wordybird
from _common import MATRIX_FIELDS
from wordybird.recorder import StreamingRecorder, bf16  # noqa: F401  (bf16: the Zarr type)
from wordybird.recorder.predict import Prediction
from wordybird.training.experiments import TrainConfig, train

MODES = ("default", "compact", "predictive")
ENTROPY_POSITIONS = (30, 60, 90)
THROUGHPUT_STEPS = 32


def notebook_predictions(metadata: dict) -> dict[str, Prediction]:
    """The predictions ``RecorderCallback`` sets for a ``wordybird train`` run (AdamW,
    clipping at ``max_grad_norm``), from the run's recorded hyperparameters."""
    h = metadata["hyperparameters"]
    grad = {"grad": "grads", "grad_norm": "grad_norms"}
    common = {"max_grad_norm": h["max_grad_norm"], "maximize": False, "step_offset": 0}
    b1, b2 = metadata["adam_beta1"], metadata["adam_beta2"]
    return {
        "momentum": Prediction("adam_exp_avg", grad, {**common, "beta1": b1}),
        "variance": Prediction("adam_exp_avg_sq", grad, {**common, "beta2": b2}),
        "embeddings": Prediction(
            "adam_param",
            {"exp_avg": "momentum", "exp_avg_sq": "variance", "lr": "learning_rates"},
            {
                "beta1": b1,
                "beta2": b2,
                "eps": h["adam_epsilon"],
                "weight_decay": metadata["weight_decay"],
                "step_offset": 0,
            },
        ),
    }


def record(path: Path, mode: str, steps, predictions: dict[str, Prediction]) -> float:
    """Record ``(step, fields)`` pairs into a new store; seconds until all are committed."""
    start = time.perf_counter()
    with StreamingRecorder(path, mode=mode, overwrite=True) as recorder:
        for step, fields in steps:
            recorder.record(step, fields, predictions=predictions)
    return time.perf_counter() - start


def rerecord(
    source: wordybird.Recording, path: Path, mode: str, predictions: dict[str, Prediction]
) -> None:
    """Every step of ``source``, read in order, recorded anew into ``path`` in ``mode``."""
    record(path, mode, ((int(s), source.at_step(int(s))) for s in source.steps), predictions)


def entropy_bits(values: np.ndarray) -> float:
    """Order-0 entropy per value of 16-bit words."""
    counts = np.bincount(values.view(np.uint16).ravel(), minlength=1 << 16)
    p = counts[counts > 0] / values.size
    return float(-(p * np.log2(p)).sum())


def bench_compression(source: wordybird.Recording, stores: dict[str, Path]) -> None:
    raw = {f: source[f].numpy(0).nbytes * len(source) for f in MATRIX_FIELDS}
    print(f"\n== 1. compression, {len(source)} steps of {source.path} ==")
    print(f"{'field':12s}" + "".join(f"{m:>22s}" for m in MODES))
    sizes = {}
    for mode, store in stores.items():
        with wordybird.open(store) as rec:
            sizes[mode] = {f: rec.nbytes_on_disk(f) for f in MATRIX_FIELDS}
    for field in MATRIX_FIELDS:
        cells = ""
        for mode, store in stores.items():
            array = zarr.open_array(store / field, mode="r")
            stored = [np.asarray(array[p]) for p in ENTROPY_POSITIONS]
            bits = statistics.mean(entropy_bits(s) for s in stored)
            exact = ""
            if mode == "predictive":
                exact = f" {100 * statistics.mean(float(np.mean(s == 0)) for s in stored):5.1f}%="
            cells += f"{raw[field] / sizes[mode][field]:7.2f}x {bits:5.2f}b{exact:>8s}"
        print(f"{field:12s}{cells}")
    total = sum(raw.values())
    overall = {m: total / sum(sizes[m].values()) for m in MODES}
    print("overall     " + "".join(f"{overall[m]:7.2f}x{'':14s}" for m in MODES))
    verdict = "meets" if overall["predictive"] >= 8 else "MISSES"
    print(
        f"predictive overall {overall['predictive']:.2f}x: {verdict} the 8x goal "
        f"(b = bits/value stored, order-0, positions {ENTROPY_POSITIONS}; %= values predicted "
        "exactly)"
    )


def bench_throughput(source: wordybird.Recording, workdir: Path, predictions) -> None:
    steps = [
        (int(source.steps[p]), {f: source[f][p] for f in source.fields})
        for p in range(min(THROUGHPUT_STEPS, len(source)))
    ]
    nbytes = sum(sum(t.numel() * t.element_size() for t in f.values()) for _, f in steps)
    print(
        f"\n== 2. recording throughput, {len(steps)} steps × {nbytes / len(steps) / 1e6:.1f} MB =="
    )
    speeds = {}
    for mode in MODES:
        seconds = record(workdir / f"speed-{mode}.zarr", mode, steps, predictions)
        speeds[mode] = nbytes / seconds
        print(
            f"{mode:10s} {speeds[mode] / 1e6:6.0f} MB/s ({seconds / len(steps) * 1e3:.0f} ms/step)"
        )
    verdict = "meets" if speeds["predictive"] >= 180e6 else "MISSES"
    print(f"predictive: {verdict} the 180 MB/s goal")


def bench_reads(stores: dict[str, Path], reads: int, interval: int = 16) -> None:
    with wordybird.open(stores["default"]) as rec:
        count = len(rec)
    positions = random.Random(0).sample(range(count), reads)
    offsets = sorted({p % interval for p in positions})
    print(
        f"\n== 3. one step of embeddings after a fresh open, positions {positions} "
        f"({len(offsets)} of the {interval} distances from a keyframe) =="
    )
    for mode, store in stores.items():
        times = []
        for position in positions:
            start = time.perf_counter()
            with wordybird.open(store) as rec:
                rec["embeddings"].numpy(position)
            times.append(time.perf_counter() - start)
        far = max(range(reads), key=lambda i: positions[i] % interval)
        print(
            f"{mode:10s} median {statistics.median(times) * 1e3:6.0f} ms, "
            f"max {max(times) * 1e3:6.0f} ms; {positions[far] % interval} past a keyframe "
            f"{times[far] * 1e3:6.0f} ms (goal <= 300 ms)"
        )


def bench_export(stores: dict[str, Path], workdir: Path) -> None:
    print("\n== 4. full sequential export ==")
    seconds = {}
    for mode, store in stores.items():
        out = workdir / f"{mode}.safetensors"
        start = time.perf_counter()
        wordybird.export(store, out)
        seconds[mode] = time.perf_counter() - start
        print(f"{mode:10s} {seconds[mode]:6.1f} s ({out.stat().st_size / 1e9:.2f} GB)")
        out.unlink()
    ratio = seconds["predictive"] / seconds["default"]
    print(f"predictive / default: {ratio:.2f}x (goal <= 1.5x)")


def bench_train(steps: int, workdir: Path, rounds: int = 3) -> None:
    print(
        f"\n== 5. wordybird train, {steps} steps: recording in each mode vs --no-record, "
        f"{rounds} alternating rounds, median =="
    )
    configs = {
        "--no-record": TrainConfig(steps=steps, record_every=None),
        "default": TrainConfig(steps=steps, mode="default"),
        "predictive": TrainConfig(steps=steps, mode="predictive"),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, config in configs.items():
            times[name].append(train(config, workdir / f"train-{r}-{name}").seconds_per_step)
    plain = statistics.median(times["--no-record"])
    for name, seconds in times.items():
        runs = ", ".join(f"{t:.3f}" for t in seconds)
        ratio = statistics.median(seconds) / plain
        print(f"{name:12s} {runs} s/step: median {statistics.median(seconds):.3f} = {ratio:.2f}x")
    ratio = statistics.median(times["predictive"]) / plain
    print(f"predictive: {'meets' if ratio <= 1.10 else 'MISSES'} the 1.10x goal")


def bench_wb2(wb2: Path, workdir: Path) -> None:
    """Sizes of one real WB2 run re-recorded, step by step, in every mode (the mode it was
    recorded in too: its store may come from older code)."""
    source = wordybird.open(wb2)
    print(f"\n== 6. a real {len(source)}-step run ({wb2}), re-recorded in each mode ==")
    raw = sum(source[f].numpy(0).nbytes for f in MATRIX_FIELDS) * len(source)
    predictions = notebook_predictions(source.metadata)
    for mode in MODES:
        store = workdir / f"wb2-{mode}.zarr"
        rerecord(source, store, mode, predictions)
        with wordybird.open(store) as rec:
            four = sum(rec.nbytes_on_disk(f) for f in MATRIX_FIELDS)
            print(
                f"{mode:10s} {rec.size_on_disk() / 1e9:6.2f} GB on disk; the four big fields "
                f"{four / 1e9:6.2f} GB = {raw / four:5.2f}x"
            )
        shutil.rmtree(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recording", type=Path, default=Path("runs/wb1/recording.zarr"))
    parser.add_argument("--train-steps", type=int, default=30, help="0: skip section 5")
    parser.add_argument("--reads", type=int, default=16)
    parser.add_argument("--wb2", type=Path, help="a real WB2 recording, for section 6")
    args = parser.parse_args()
    source = wordybird.open(args.recording)
    predictions = notebook_predictions(source.metadata)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stores = {mode: workdir / f"{mode}.zarr" for mode in MODES}
        for mode in MODES:
            rerecord(source, stores[mode], mode, predictions)
        bench_compression(source, stores)
        bench_throughput(source, workdir, predictions)
        bench_reads(stores, args.reads)
        bench_export(stores, workdir)
        if args.wb2:
            bench_wb2(args.wb2, workdir)
        if args.train_steps:
            bench_train(args.train_steps, workdir)


if __name__ == "__main__":
    main()
