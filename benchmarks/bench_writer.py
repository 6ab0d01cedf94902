"""The writer at the hardware's limit: CPU per recorded byte, three write paths, codecs, threads.

A GPT-2-small step is its input embedding (50,257 × 768 bf16) with its gradient and AdamW's
two moments: 309 MB. The tensors are real: a few steps of ``GPT2LMHeadModel(GPT2Config())``
(random init, bf16 parameters computed in fp32, AdamW, batch 4 × 128) trained here first.
Every figure is measured in this one run; the CPU seconds (of every thread but the one that
calls ``record()``: the writer's, its codec threads', zarr's) move much less with other load
than the wall times.

1. **Codecs** (``--codecs``): ratio and one core's CPU-s per GB on the GPT-2-small step and on
   a real WB1 recording's four big fields (``--recording``), for what each mode stores:
   default mode's values, compact mode's ULP deltas; blosc zstd levels 1/3/5 and lz4, each
   with byte and bit shuffle.
2. **Write paths**, the recorder's work alone (no training): CPU-s per step and MB/s for
   zarr-python's own ``setitem`` path (what the recorder used before), TensorStore's zarr3
   writer given the same arrays and codecs, and wordybird's chunk writer (one codec thread
   and two), all into the page cache, default mode.
3. **Modes and threads**: ``StreamingRecorder`` in each mode with 1 and 2 codec threads:
   CPU-s per step and raw GB/s. Goals: default ≤ 0.35 CPU-s a step, compact and
   predictive ≤ 0.5; ≥ 1 GB/s with the machine's two cores.

Run: ``python benchmarks/bench_writer.py [--steps 6] [--recording runs/wb1/recording.zarr]
[--no-codecs]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numcodecs
import numpy as np
import torch

import wordybird
from _common import bits_of, chunks_as_stored
from wordybird.dtypes import from_torch
from wordybird.recorder.delta import delta_encode
from wordybird.recorder.layout import FieldSpec, chunk_shape, compressors_for

WTE = "transformer.wte.weight"
#: The four big fields of a step, as ``watch`` names them.
BIG = ("value", "grad", "exp_avg", "exp_avg_sq")
GOALS = {"default": 0.35, "compact": 0.5, "predictive": 0.5}
THROUGHPUT_GOAL = 1e9
#: Training steps run to take real tensors from (the first has no Adam state yet).
REAL_STEPS = 4

Step = dict[str, torch.Tensor]


def real_gpt2_steps(count: int) -> list[Step]:
    """``count`` consecutive recorded steps of a GPT-2-small loop (after a warm-up step)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from wordybird.training.model import compute_in

    torch.manual_seed(0)
    model = compute_in(
        GPT2LMHeadModel(GPT2Config(n_positions=128)).to(torch.bfloat16), torch.float32
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    param = model.transformer.wte.weight
    steps = []
    for i in range(count + 1):
        data = torch.randint(model.config.vocab_size, (4, 128))
        model(input_ids=data, labels=data).loss.backward()
        grad = param.grad.detach().clone()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i == 0:
            continue  # no Adam state before the first step
        state = optimizer.state[param]
        steps.append(
            {
                f"{WTE}/value": param.detach().clone(),
                f"{WTE}/grad": grad,
                f"{WTE}/exp_avg": state["exp_avg"].clone(),
                f"{WTE}/exp_avg_sq": state["exp_avg_sq"].clone(),
                f"{WTE}/step": state["step"].clone(),
                f"{WTE}/lr": torch.tensor(6e-4, dtype=torch.float32),
                "grad_norms": torch.tensor(1.0),
            }
        )
    return steps


def nbytes(step: Step) -> int:
    return sum(t.numel() * t.element_size() for t in step.values())


# -- 1. codecs ------------------------------------------------------------------------------


CODECS: dict[str, tuple[str, int]] = {
    **{f"zstd{level}": ("zstd", level) for level in (1, 3, 5)},
    "lz4": ("lz4", 5),
}
SHUFFLES = {"byte": numcodecs.Blosc.SHUFFLE, "bit": numcodecs.Blosc.BITSHUFFLE}


def codec_table(label: str, pairs: Sequence[tuple[np.ndarray, np.ndarray]], fields: list[str]):
    """Ratio and CPU-s per GB for every candidate on values and on ULP deltas."""
    inputs: dict[str, list[np.ndarray]] = {"values": [], "deltas": []}
    for previous, current in pairs:
        for field, (a, b) in enumerate(zip(previous, current, strict=True)):
            name = fields[field]
            inputs["values"] += chunks_as_stored(name, b)
            inputs["deltas"] += chunks_as_stored(name, delta_encode(b, a))
    print(f"\n-- codecs on {label}: ratio, CPU-s per GB (one thread)")
    print(f"  {'codec':14s} {'values':>16s} {'ULP deltas':>16s}")
    numcodecs.blosc.use_threads = False
    for name, (cname, level) in CODECS.items():
        for shuffle_name, shuffle in SHUFFLES.items():
            codec = numcodecs.Blosc(cname, level, shuffle)
            cells = []
            for kind in ("values", "deltas"):
                chunks = inputs[kind]
                raw = sum(c.nbytes for c in chunks)
                start = time.thread_time()
                packed = sum(len(codec.encode(c)) for c in chunks)
                cpu = time.thread_time() - start
                cells.append(f"{raw / packed:6.2f}× {cpu / raw * 1e9:5.2f} s")
            print(f"  {name + ' ' + shuffle_name:14s} {cells[0]:>16s} {cells[1]:>16s}")


def wb1_pairs(path: Path, positions: Sequence[int]) -> tuple[list, list[str]]:
    fields = ["embeddings", "grads", "momentum", "variance"]
    with wordybird.open(path) as rec:
        pairs = [
            (
                [bits_of(rec[f][p - 1]) for f in fields],
                [bits_of(rec[f][p]) for f in fields],
            )
            for p in positions
        ]
    return pairs, fields


# -- 2. write paths ---------------------------------------------------------------------------


def zarr_path(out: Path, steps: list[Step], count: int) -> None:
    """zarr-python's setitem, the recorder's write path before: per step, grow each array,
    write each field (zarr assembles, encodes and writes its chunks), rewrite the header."""
    import zarr.api.asynchronous as zasync
    from zarr.codecs import BytesCodec
    from zarr.core.sync import sync

    import wordybird.recorder.bf16  # noqa: F401  (the bfloat16 data type)

    async def create() -> tuple[object, dict[str, object]]:
        group = await zasync.open_group(store=str(out), mode="w", zarr_format=3)
        arrays = {}
        for name, tensor in steps[0].items():
            spec = field_spec(name, tensor)
            arrays[name] = await group.create_array(
                name,
                shape=(0, *spec.shape),
                chunks=chunk_shape(spec),
                dtype=spec.stored_dtype,
                fill_value=0,
                compressors=compressors_for(spec),
                serializer=BytesCodec(endian="little"),
                config={"write_empty_chunks": True},
            )
        return group, arrays

    group, arrays = sync(create())

    def write() -> None:  # in a thread of its own, as the recorder's writer
        for i in range(count):
            step = steps[i % len(steps)]

            async def one(i: int = i, step: Step = step) -> None:
                await asyncio.gather(*(a.resize((i + 1, *a.shape[1:])) for a in arrays.values()))
                await asyncio.gather(
                    *(arrays[n].setitem(i, from_torch(t)) for n, t in step.items())
                )
                await group.update_attributes({"committed": i + 1})

            sync(one())

    thread = threading.Thread(target=write, name="zarr-writer")
    thread.start()
    thread.join()


def field_spec(name: str, tensor: torch.Tensor) -> FieldSpec:
    value = from_torch(tensor)
    dtype = "bfloat16" if tensor.dtype == torch.bfloat16 else value.dtype.name
    return FieldSpec(name, dtype, tuple(value.shape))


def split_cpu_of_writers() -> tuple[float, float]:
    """:func:`cpu_of_writers` as (user, system) seconds: the system part is the kernel's
    work for the writes (the page cache), which moves a lot with the machine's state."""
    process = resource.getrusage(resource.RUSAGE_SELF)
    main = resource.getrusage(resource.RUSAGE_THREAD)
    return process.ru_utime - main.ru_utime, process.ru_stime - main.ru_stime


def tensorstore_path(out: Path, steps: list[Step], count: int) -> None:
    """TensorStore's zarr3 driver given the same arrays (shape, chunks, codecs) as zarr's."""
    import tensorstore as ts

    stores = {}
    for name, tensor in steps[0].items():
        spec = field_spec(name, tensor)
        codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
        codecs += [c.to_dict() for c in compressors_for(spec)]
        stores[name] = ts.open(
            {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": str(out / name)},
                "metadata": {
                    "shape": [count, *spec.shape],
                    "chunk_grid": {
                        "name": "regular",
                        "configuration": {"chunk_shape": list(chunk_shape(spec))},
                    },
                    "data_type": spec.dtype,
                    "codecs": codecs,
                    "fill_value": 0,
                },
                "create": True,
                "delete_existing": True,
            }
        ).result()
    for i in range(count):
        step = steps[i % len(steps)]
        futures = [stores[n][i].write(from_torch(t)) for n, t in step.items()]
        for future in futures:
            future.result()


def recorder_path(out: Path, steps: list[Step], count: int, mode: str, threads: int) -> None:
    """StreamingRecorder from the first record() to close()."""
    recorder = wordybird.StreamingRecorder(out, mode=mode, queue_size=1, codec_threads=threads)
    rules = predictions()
    for i in range(count):
        recorder.record(i + 1, steps[i % len(steps)], predictions=rules)
    recorder.close()


def predictions() -> dict:
    """AdamW's rules for the GPT-2 step's fields (as ``watch`` would set them)."""
    from wordybird.recorder.predict import Prediction

    grad = {"grad": f"{WTE}/grad", "grad_norm": "grad_norms"}
    common = {"max_grad_norm": 1.0, "maximize": False, "step_offset": 1}
    return {
        f"{WTE}/exp_avg": Prediction("adam_exp_avg", grad, {**common, "beta1": 0.9}),
        f"{WTE}/exp_avg_sq": Prediction("adam_exp_avg_sq", grad, {**common, "beta2": 0.999}),
        f"{WTE}/value": Prediction(
            "adam_param",
            {"exp_avg": f"{WTE}/exp_avg", "exp_avg_sq": f"{WTE}/exp_avg_sq", "lr": f"{WTE}/lr"},
            {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "step_offset": 1},
        ),
    }


def measure(what: str, data: Path, count: int, out: Path) -> dict[str, float]:
    """One write path in this (fresh) process: the writers' user and system CPU seconds,
    and the wall time from the first step to the last one closed."""
    steps = torch.load(data)
    user, system = split_cpu_of_writers()
    start = time.perf_counter()
    kind, _, options = what.partition(":")
    if kind == "zarr":
        zarr_path(out, steps, count)
    elif kind == "tensorstore":
        tensorstore_path(out, steps, count)
    else:
        mode, threads = options.split(",")
        recorder_path(out, steps, count, mode, int(threads))
    wall = time.perf_counter() - start
    user_end, system_end = split_cpu_of_writers()
    return {"user": user_end - user, "system": system_end - system, "wall": wall}


def run_measurement(what: str, data: Path, count: int, root: Path, rounds: int) -> dict:
    """``what`` in ``rounds`` fresh processes (each after the others' turn: see main), the
    median of each figure."""
    results = []
    for _ in range(rounds):
        out = root / "out"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, __file__, "--measure", what, "--data", str(data)]
        command += ["--steps", str(count), "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out, ignore_errors=True)
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def report(label: str, result: dict, raw: int, count: int, goal: float | None = None) -> float:
    cpu = (result["user"] + result["system"]) / count
    line = (
        f"  {label:34s} {cpu:5.2f} CPU-s/step ({result['user'] / count:.2f} user + "
        f"{result['system'] / count:.2f} system)  {raw / cpu / 1e6:5.0f} MB per CPU-s  "
        f"{raw * count / result['wall'] / 1e9:5.2f} GB/s"
    )
    if goal is not None:
        line += f"  goal <= {goal:.2f}: {'met' if cpu <= goal else 'MISSED'}"
    print(line, flush=True)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps written per measurement")
    parser.add_argument("--recording", type=Path, help="a real WB1 recording, for the codecs")
    parser.add_argument("--no-codecs", action="store_true", help="skip the codec table")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per figure")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.data, args.steps, args.out)))
        return

    print(f"training {REAL_STEPS + 1} GPT-2-small steps for real tensors ...", flush=True)
    steps = real_gpt2_steps(REAL_STEPS)
    raw = nbytes(steps[0])
    print(f"one step: {raw / 1e6:.1f} MB ({', '.join(steps[0])})")

    if not args.no_codecs:
        fields = [f"{WTE}/{k}" for k in BIG]
        pairs = [
            ([bits_of(a[f]) for f in fields], [bits_of(b[f]) for f in fields])
            for a, b in itertools.pairwise(steps)
        ][:2]
        codec_table("a GPT-2-small step (value, grad, exp_avg, exp_avg_sq)", pairs, fields)
        if args.recording is not None:
            pairs, fields = wb1_pairs(args.recording, [30, 60, 90])
            codec_table(f"WB1 {args.recording} (positions 30/60/90)", pairs, fields)

    count = args.steps
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        root = Path(tmp)
        data = root / "steps.pt"
        torch.save(steps, data)
        runs = {
            "zarr": "zarr-python setitem (the old path)",
            "tensorstore": "TensorStore zarr3 writer",
            "wordybird:default,1": "wordybird chunk writer, 1 thread",
        }
        for mode in ("default", "compact", "predictive"):
            for threads in (1, 2):
                runs[f"wordybird:{mode},{threads}"] = f"{mode}, {threads} codec thread(s)"
        results = {what: run_measurement(what, data, count, root, args.rounds) for what in runs}

    print(
        f"\n-- write paths, the same codecs, {count} steps, the recorder's work alone, each in a "
        f"fresh process, median of {args.rounds}"
    )
    ours = report(runs["wordybird:default,1"], results["wordybird:default,1"], raw, count)
    base = report(runs["zarr"], results["zarr"], raw, count)
    tstore = report(runs["tensorstore"], results["tensorstore"], raw, count)
    print(
        f"  CPU against wordybird's: zarr-python {base / ours:.2f}x, "
        f"TensorStore {tstore / ours:.2f}x"
    )
    print(f"\n-- StreamingRecorder by mode and codec threads ({count} steps, queue_size=1)")
    for what, label in runs.items():
        if what.startswith("wordybird:"):
            mode, threads = what.partition(":")[2].split(",")
            goal = GOALS[mode] if threads == "1" else None
            report(label, results[what], raw, count, goal)
    print(
        f"  (throughput goal: >= {THROUGHPUT_GOAL / 1e9:.0f} GB/s into the page cache with "
        "this machine's cores)"
    )


if __name__ == "__main__":
    main()
