"""Sharded parameters: FSDP2's are gathered to the main process; the rest are refused.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter is a DTensor split on
its first axis across the processes: process ``r`` of ``W`` holds rows
``[r * c, (r + 1) * c)`` (``c = ceil(rows / W)``, the last ones fewer or none), its
gradient (reduce-scattered: the averaged gradient the optimizer uses) and its optimizer
state the same way. No process holds a whole tensor, so each recorded one is gathered
(``torch.distributed.gather``) into buffers on the main process, which alone writes; the
others send their own rows and keep nothing but a padded copy of them where their share is
shorter than the longest (gloo gathers equal shapes). ``rows=`` is applied before the
gather: each process sends only its chosen rows. benchmarks/bench_sharded.py measured this
against each process writing its own rows into the store (README there).

FSDP1 (``FullyShardedDataParallel``: flat parameters), DeepSpeed ZeRO (partitioned
parameters, gradients or optimizer state) and DTensors placed otherwise (tensor
parallelism, HSDP's 2-D mesh, ``Shard(1)``) are refused: a process there holds a shard
that must never be recorded as if it were the whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from wordybird.errors import WordybirdError

try:  # public since torch 2.4
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - older torch has no FSDP2 either
    DTensor = Shard = None

#: What a refusal names as supported.
SUPPORTED = (
    "wordybird records FSDP2 (fully_shard) parameters, sharded on dim 0 over all processes, "
    "with wordybird.watch"
)


def is_dtensor(tensor: Any) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of ``tensor`` (the tensor itself when it is not a DTensor)."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def main_process() -> bool:
    """Whether this is the process that records: the only one, or rank 0 of several."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def check_recorder_here(recorder: object | None) -> None:
    """One store, one writer: a recorder on the main process and None on the others."""
    if recorder is None and main_process():
        raise WordybirdError("watch() was given no recorder on the main process: nothing records")
    if recorder is not None and not main_process():
        raise WordybirdError(
            f"process {dist.get_rank()} of {dist.get_world_size()} was given a recorder: "
            "create it on the main process only and pass None elsewhere (one store, one writer)"
        )


def refuse_other_sharding(model: nn.Module, optimizer: Any) -> None:
    """Raise for FSDP1 and DeepSpeed ZeRO, before a shard can be taken for a whole tensor.
    Call with the model as given (FSDP1's wrapper unwraps to a module that has lost its
    parameters)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    engines = [type(model), type(inner)]
    if any(cls.__module__.split(".")[0] == "deepspeed" for cls in engines) or any(
        hasattr(p, "ds_id") for p in model.parameters()
    ):
        raise WordybirdError(
            "DeepSpeed ZeRO partitions parameters, gradients or optimizer state across "
            f"processes and is not supported: {SUPPORTED}"
        )
    if dist.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            raise WordybirdError(
                "FSDP1 (FullyShardedDataParallel) holds flattened shards of parameters, which "
                f"are not supported: {SUPPORTED}"
            )


def sharded(
    model: nn.Module, parameters: Mapping[str, nn.Parameter], rows: Mapping[str, torch.Tensor]
) -> dict[str, ShardedRows]:
    """The recorded parameters that are FSDP2 shards, each with how to gather it. Every
    trainable DTensor must be one (the global gradient norm sums their shards)."""
    for name, param in model.named_parameters():
        if is_dtensor(param) and param.requires_grad:
            _check_placement(name, param)
    return {
        name: ShardedRows(param, rows.get(name))
        for name, param in parameters.items()
        if is_dtensor(param)
    }


def _check_placement(name: str, param: DTensor) -> None:
    mesh = param.device_mesh
    if mesh.ndim != 1 or tuple(param.placements) != (Shard(0),):
        raise WordybirdError(
            f"{name} is a DTensor placed as {tuple(param.placements)} on a {mesh.ndim}-D "
            f"mesh, which is not supported: {SUPPORTED}"
        )
    first = dist.get_global_rank(mesh.get_group(), 0)  # the main process must be, to record
    if mesh.size() != dist.get_world_size() or first != 0:
        raise WordybirdError(
            f"{name} is sharded over {mesh.size()} of the {dist.get_world_size()} processes, "
            f"its first rows on process {first}, which is not supported: {SUPPORTED}"
        )


class ShardedRows:
    """One FSDP2 parameter: which of its (chosen) rows this process holds, and the gather
    of a tensor of its shape into the whole on the main process.

    Args:
        param: the sharded parameter (a DTensor ``Shard(0)`` on a 1-D mesh of every process).
        index: the sorted rows to record (``rows=``), or None for all.
    """

    def __init__(self, param: DTensor, index: torch.Tensor | None) -> None:
        self.group = param.device_mesh.get_group()
        self.world = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)  # its place on the mesh: which rows it holds
        self.main = self.rank == 0  # global rank 0 too (checked): the process that records
        rows = param.shape[0]
        per = math.ceil(rows / self.world)
        bounds = [(min(r * per, rows), min((r + 1) * per, rows)) for r in range(self.world)]
        start, end = bounds[self.rank]
        if local(param).shape[0] != end - start:
            raise WordybirdError(  # FSDP2 splits as torch.chunk does; anything else is unknown
                f"a parameter of {rows} rows holds {local(param).shape[0]} on process "
                f"{self.rank} of {self.world}, not the {end - start} of an even split: "
                f"{SUPPORTED}"
            )
        if index is None:
            counts = [e - s for s, e in bounds]
            self.index = None
        else:
            counts = [int(((index >= s) & (index < e)).sum()) for s, e in bounds]
            mine = index[(index >= start) & (index < end)] - start
            self.index = mine
        self.counts = counts
        self.pad = max(counts)
        #: the gathered rows are the buffer's first ones (always without rows=): no copy
        self._prefix = all(c == self.pad or not any(counts[r + 1 :]) for r, c in enumerate(counts))
        self._send: dict[tuple[torch.dtype, tuple[int, ...]], torch.Tensor] = {}
        self._receive: dict[str, torch.Tensor] = {}

    def mine(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's chosen rows of ``tensor`` (a DTensor of the parameter's shape, or
        its local shard)."""
        part = local(tensor)
        if self.index is None:
            return part
        return part.index_select(0, self.index.to(part.device))

    def gather(self, field: str, part: torch.Tensor) -> torch.Tensor | None:
        """The whole of ``field`` (the chosen rows, in order) on the main process from every
        process's ``part`` (see :meth:`mine`); None on the others. Every process calls it
        for the same fields in the same order."""
        count = self.counts[self.rank]
        send = part.contiguous()
        if count < self.pad:
            key = (part.dtype, tuple(part.shape[1:]))
            if key not in self._send:
                self._send[key] = part.new_zeros((self.pad, *key[1]))
            send = self._send[key]
            send[:count].copy_(part)
        if not self.main:
            dist.gather(send, None, dst=0, group=self.group)
            return None
        buffer = self._receive.get(field)
        shape = (self.world, self.pad, *part.shape[1:])
        if buffer is None or buffer.shape != shape or buffer.dtype != part.dtype:
            # kept for the run: the recorder copies a step before the next gather reuses it
            buffer = self._receive[field] = part.new_empty(shape)
        dist.gather(send, list(buffer.unbind(0)), dst=0, group=self.group)
        if self._prefix:
            return buffer.flatten(0, 1)[: sum(self.counts)]
        return torch.cat([buffer[r, :c] for r, c in enumerate(self.counts)])


def sum_over_processes(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of ``values`` over this process's and every other's (one all-reduce)."""
    parts = list(values)
    total = torch.stack(parts).sum() if parts else torch.zeros(())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
