"""Running ``wordybird train``/``continue`` as several processes (torchrun, accelerate launch).

One process, the main one (rank 0), owns everything a run writes: it prepares the run
folder, writes ``run.json``, the token masks and the summary, stages a ``continue``'s
checkpoint, opens the recording and prints. The others train and record nothing; where they
need what the main process makes (the token caches, the run folder, a staged checkpoint),
they wait for it at :meth:`Processes.main_first`, which also carries the main process's
failure to them, so that a refused run stops every process at once instead of leaving the
others waiting at a barrier. The Trainer (through Accelerate) does the rest: it splits each
global batch across the processes and averages their gradients.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from wordybird.errors import StoppedWithMain, WordybirdError


def process_count() -> int:
    """How many processes the launcher started (torchrun and accelerate launch both set
    ``WORLD_SIZE``); 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Whether this process is the one that writes and prints (rank 0)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def per_process_batch(batch_size: int, processes: int) -> int:
    """Each process's share of the global batch ``batch_size``; refused unless it divides
    evenly (else the processes' batches, and so the step, would not be the global batch)."""
    if batch_size % processes:
        raise WordybirdError(
            f"--batch-size {batch_size} is the global batch and does not split evenly across "
            f"{processes} processes: give a multiple of {processes}"
        )
    return batch_size // processes


@dataclass(frozen=True)
class Processes:
    """This run's processes: how many, and which one this is."""

    count: int
    rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.count > 1

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The block runs in the main process first, then, once it succeeded, in the others
        (which skip what only the main process does: ``if processes.is_main``). If it fails
        in the main process, the others raise :class:`StoppedWithMain` instead of running it."""
        if not self.several:
            yield
            return
        if not self.is_main:
            self._follow()
            yield
            return
        try:
            yield
        except BaseException as exc:
            self._broadcast(f"{exc}" if isinstance(exc, WordybirdError) else f"{exc!r}")
            raise
        self._broadcast(None)

    def share(self, value: Any) -> Any:
        """The main process's ``value`` (picklable), in every process."""
        if not self.several:
            return value
        return self._broadcast(value if self.is_main else None)

    def wait_for_everyone(self) -> None:
        """Every process waits here until all have come (e.g. before the main process removes
        a staged checkpoint the others read)."""
        if self.several:
            import torch.distributed as dist

            dist.barrier()

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process: every process must call it at the same
        point (e.g. each step, so that a Ctrl-C seen by one stops all after the same step)."""
        if not self.several:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _follow(self) -> None:
        failure = self._broadcast(None)
        if failure is not None:
            raise StoppedWithMain(f"the main process failed: {failure}")

    @staticmethod
    def _broadcast(value: Any) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]


def _collective_device() -> Any:
    """Where collectives' tensors live: the process's GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def launched_processes() -> Iterator[Processes]:
    """This run's :class:`Processes`; under a launcher, the process group is set up (as the
    Trainer will use it: Accelerate's, gloo on CPUs, NCCL on GPUs) and torn down at the end,
    whatever happens (gloo's threads have aborted an exit with SIGABRT without it)."""
    count = process_count()
    if count == 1:
        yield Processes(1, 0)
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        yield Processes(state.num_processes, state.process_index)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
