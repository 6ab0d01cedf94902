"""Snapshots: a step's tensors copied into a fixed pool of reused host buffers.

The pool is the recorder's only per-step memory. It holds ``size`` buffer sets, allocated
at the first step (when the fields' shapes are known) in pinned host memory where a GPU
exists, so that a device tensor is copied asynchronously and training goes on at once.
A caller that finds every set in use waits for the writer to hand one back: that is the
recorder's back-pressure.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from wordybird.dtypes import exportable, from_torch, numpy_dtype_of, torch_dtype_of
from wordybird.errors import WordybirdError
from wordybird.recorder.layout import FieldSpec


@dataclass
class Snapshot:
    """One step's copies, owned by the pool and reused across steps."""

    buffers: dict[str, torch.Tensor]
    step: int = -1
    ready: torch.cuda.Event | None = None  # set when a device→host copy is in flight

    def arrays(self) -> dict[str, np.ndarray]:
        """The copies as numpy arrays (views of the buffers), once every copy has landed."""
        if self.ready is not None:
            self.ready.synchronize()
        return {name: from_torch(buffer) for name, buffer in self.buffers.items()}


class SnapshotPool:
    """``size`` reusable buffer sets for one recording's fields."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: queue.Queue[Snapshot] = queue.Queue()
        self._filled = False
        #: seconds callers waited for a free buffer set (the writer's back-pressure)
        self.waited_seconds = 0.0

    def take(
        self,
        specs: Mapping[str, FieldSpec],
        step: int,
        values: Mapping[str, torch.Tensor],
        *,
        while_waiting: Callable[[], None],
    ) -> Snapshot:
        """A free buffer set holding copies of ``values``; waits while none is free, calling
        ``while_waiting`` every half second (to raise the writer's error instead of hanging)."""
        if not self._filled:
            pin = torch.cuda.is_available()
            for _ in range(self._size):
                buffers = {
                    name: torch.empty(
                        spec.shape, dtype=torch_dtype_of(spec.numpy_dtype), pin_memory=pin
                    )
                    for name, spec in specs.items()
                }
                self._free.put(Snapshot(buffers))
            self._filled = True
        try:
            snapshot = self._free.get_nowait()
        except queue.Empty:
            start = time.perf_counter()
            while True:
                try:
                    snapshot = self._free.get(timeout=0.5)
                    break
                except queue.Empty:
                    while_waiting()
            self.waited_seconds += time.perf_counter() - start
        try:
            snapshot.step = step
            for name, value in values.items():
                _copy_into(snapshot.buffers[name], value)
            snapshot.ready = None
            if any(v.is_cuda for v in values.values()):
                snapshot.ready = torch.cuda.Event()
                snapshot.ready.record()
        except BaseException:
            self.give_back(snapshot)
            raise
        return snapshot

    def give_back(self, snapshot: Snapshot) -> None:
        """Return a buffer set once the writer is done with it."""
        self._free.put(snapshot)


def _copy_into(buffer: torch.Tensor, value: torch.Tensor) -> None:
    """Copy one field's value into its snapshot buffer.

    A CPU tensor is copied by numpy (a memcpy): torch's ``copy_`` splits a large copy over
    its intra-op threads, which then wait for cores busy with the writer's compression, and
    ran many times slower than numpy's memcpy on 2 cores (measured there:
    benchmarks/bench_recorder.py).
    """
    if value.device.type == "cpu":
        np.copyto(from_torch(buffer), from_torch(value))
    else:
        buffer.copy_(value, non_blocking=value.is_cuda)


def as_tensor(name: str, value: torch.Tensor | np.ndarray | float) -> torch.Tensor:
    """A field's value as a tensor whose dtype a recording can hold (numpy has it)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, RuntimeError, ValueError) as exc:
            raise WordybirdError(f"field {name!r}: cannot record a {type(value).__name__}") from exc
    try:
        dtype = numpy_dtype_of(tensor.dtype)
    except TypeError:  # float8, bits…: numpy has no such dtype
        raise WordybirdError(
            f"field {name!r}: cannot record {tensor.dtype} values (no numpy dtype); convert them"
        ) from None
    if not exportable(dtype):  # every recording exports to the notebook's safetensors file
        raise WordybirdError(
            f"field {name!r}: cannot record {tensor.dtype} values: a safetensors export "
            "could not hold them; convert them (a complex tensor: torch.view_as_real)"
        )
    return tensor
