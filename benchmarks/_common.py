"""Shared pieces of the benchmarks: the notebook's step, tensor sources, codec timing.

Benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported as
``_common`` from the benchmarks folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numcodecs
import numcodecs.blosc
import numpy as np
import torch
from zarr.codecs import BloscCodec

import wordybird
from wordybird.recorder.layout import FieldSpec, chunk_shape
from wordybird.storage import RUN_RECORDING

#: The notebook's GPT-2 embedding shape: vocabulary × hidden size.
VOCAB, DIM = 50257, 64
#: The four [V, D] fields the notebook records per step (then logits [V] and a loss).
MATRIX_FIELDS = ("embeddings", "grads", "momentum", "variance")
#: Where a real 30-step run at the notebook's config left its steps (bf16 bits as int16).
REAL_NPZ_DIR = Path("/tmp/real")
#: The notebook's in-RAM scheme at its shapes, 101 steps (measured, /work/shared/NOTES.md).
NOTEBOOK_PEAK_RSS_GROWTH = 7.7e9
#: Steps trained for real tensors when none are at hand (about a minute or two on 2 cores).
FRESH_RUN_STEPS = 30

Step = dict[str, torch.Tensor]


def step_nbytes(step: Step) -> int:
    """Raw tensor bytes of one step: what a recorder must move per step."""
    return sum(t.numel() * t.element_size() for t in step.values())


def synthetic_walk(count: int, seed: int = 0) -> list[Step]:
    """``count`` consecutive steps of a bf16 random walk at the notebook's shapes.

    Random values in bf16 compress only through their sign and exponent bits, about as
    well as real training tensors do, so the recorder's compression work is real; each
    step adds a little noise to the previous one, as training does.
    """
    g = torch.Generator().manual_seed(seed)
    scales = {"embeddings": 0.02, "grads": 1e-3, "momentum": 1e-4, "variance": 1e-7}
    state = {name: torch.randn(VOCAB, DIM, generator=g) * s for name, s in scales.items()}
    steps = []
    for i in range(count):
        for name, s in scales.items():
            state[name] += torch.randn(VOCAB, DIM, generator=g) * (s * 0.01)
        step = {name: value.bfloat16() for name, value in state.items()}
        step["variance"] = step["variance"].abs()
        step["logits"] = (torch.randn(VOCAB, generator=g) * 3).bfloat16()
        step["losses"] = torch.tensor(10.0 - 0.01 * i).bfloat16()
        steps.append(step)
    return steps


@dataclass(frozen=True)
class TensorSource:
    """Real per-step tensors, loaded one step at a time (a long recording never fits RAM)."""

    label: str
    count: int
    load: Callable[[int], Step]

    def __iter__(self) -> Iterator[Step]:
        return (self.load(i) for i in range(self.count))


def _recording_source(path: Path, max_steps: int, label: str) -> TensorSource:
    rec = wordybird.open(path)
    count = min(len(rec), max_steps)
    return TensorSource(
        f"{count} steps of {label}", count, lambda i: {f: rec[f][i] for f in rec.fields}
    )


def tensor_source(recording: Path | None, max_steps: int, workdir: Path) -> TensorSource:
    """The real tensors to measure compression on, from the best source available.

    In order: the recording given on the command line; the steps of a real run saved in
    ``/tmp/real``; else a short run of ``wordybird.training`` at the notebook's config
    (its first ``FRESH_RUN_STEPS`` steps), trained into ``workdir`` now.
    """
    if recording is not None:
        return _recording_source(recording, max_steps, f"recording {recording}")
    files = sorted(REAL_NPZ_DIR.glob("step*.npz"))[:max_steps]
    if files:

        def load_npz(i: int) -> Step:
            with np.load(files[i]) as data:
                return {k: torch.from_numpy(data[k]).view(torch.bfloat16) for k in data.files}

        return TensorSource(f"{len(files)} real steps from {REAL_NPZ_DIR}", len(files), load_npz)
    from wordybird.training import experiments

    steps = min(max_steps, FRESH_RUN_STEPS)
    print(f"no real tensors at hand: training {steps} steps at the notebook's config first")
    run = experiments.train(experiments.TrainConfig(steps=steps), workdir / "fresh-run")
    return _recording_source(
        run.out / RUN_RECORDING, max_steps, f"a fresh {steps}-step training run"
    )


def numcodecs_blosc(codec: BloscCodec) -> numcodecs.Blosc:
    """The numcodecs compressor that a Zarr ``BloscCodec`` runs, with the same settings."""
    config = codec.to_dict()["configuration"]
    shuffles = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
    return numcodecs.Blosc(
        cname=config["cname"],
        clevel=config["clevel"],
        shuffle=shuffles[config["shuffle"]],
        blocksize=config["blocksize"],
        typesize=config["typesize"],
    )


def chunks_as_stored(field: str, bits: np.ndarray) -> list[np.ndarray]:
    """One step of a field cut into the chunks the recorder writes (format.chunk_shape)."""
    spec = FieldSpec(field, "uint16", tuple(bits.shape))
    rows = chunk_shape(spec)[1] if bits.ndim else 1
    flat = bits.reshape(bits.shape[0], -1) if bits.ndim else bits.reshape(1)
    return [np.ascontiguousarray(flat[i : i + rows]) for i in range(0, len(flat), rows)]


def bits_of(tensor: torch.Tensor) -> np.ndarray:
    """A 2-byte tensor's raw bits as uint16 (codecs see bytes, not values)."""
    return tensor.contiguous().view(torch.int16).numpy().view(np.uint16)


def time_compress(
    codec: numcodecs.abc.Codec, chunks: Sequence[np.ndarray], repeats: int = 3
) -> tuple[float, float]:
    """(compression ratio, single-thread bytes per second) of ``codec`` over ``chunks``.

    Blosc's own worker threads are switched off so the speed is one core's; the best of
    ``repeats`` passes is kept, because other processes share the cores.
    """
    raw = sum(c.nbytes for c in chunks)
    previous = numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = False
    try:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            packed = sum(len(codec.encode(c)) for c in chunks)
            best = min(best, time.perf_counter() - start)
    finally:
        numcodecs.blosc.use_threads = previous
    return raw / packed, raw / best


#: Runs the command given as its arguments, then prints the command's own peak RSS (bytes).
#: The measuring process must not be the command's parent: Linux carries the parent's RSS at
#: the fork into the child's ``ru_maxrss``, through ``exec``, so a benchmark holding 2 GB
#: measured every command it spawned as >= 2 GB. This small process forks it instead.
_PEAK_RSS = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
errors = child.stderr.read()  # drained before waiting, so the child never blocks
_, status, usage = os.wait4(child.pid, 0)
sys.stderr.buffer.write(errors)
print(usage.ru_maxrss * 1024)  # KiB on Linux
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_of(command: list[str]) -> int:
    """Run ``command``; its own peak RSS in bytes (raises with the end of its stderr when it
    fails). Measured by a small go-between process: see ``_PEAK_RSS``."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout)


def writer_cpu_seconds(recorder: object) -> float:
    """CPU time a recorder's writing cost so far: its writer and codec threads' (which the
    recorder counts itself: its writer thread ends at close) and zarr's threads' (its event
    loop and the pool its store writes metadata in)."""
    ticks = 0
    for thread in threading.enumerate():
        if thread.name.startswith(("zarr_io", "asyncio_")) and thread.native_id is not None:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return recorder.writer_cpu_seconds + ticks / os.sysconf("SC_CLK_TCK")
