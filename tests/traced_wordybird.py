"""The ``wordybird`` command, traced, for tests/test_distributed.py.

It runs what the console script runs (``wordybird.cli.main``), in one process or under
torchrun, and each process appends to ``$TRACE_DIR/rank-$RANK.jsonl``, in order, every
training sample it reads (``{"sample": index}``, an index of the run's ``TokenDataset``) and
every file it writes, renames into place or links (``{"write": absolute path}``: Python's
audit events, and ``torch.save``; files that other native code writes, such as
safetensors', are not seen).

Usage: [torchrun --nproc_per_node=N] traced_wordybird.py train|continue ARGS...
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

from wordybird.cli import main
from wordybird.training.data import TokenDataset

rank = os.environ.get("RANK", "0")
trace = open(  # noqa: SIM115 - open until the process exits
    os.path.join(os.environ["TRACE_DIR"], f"rank-{rank}.jsonl"), "a", buffering=1
)
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def note(kind: str, value: Any) -> None:
    trace.write(json.dumps({kind: value}) + "\n")


def written(path: Any) -> None:
    if isinstance(path, (str, bytes, os.PathLike)):
        note("write", os.path.abspath(os.fsdecode(path)))


def audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args[2] & WRITING:  # (path, mode, flags): open() and os.open()
        written(args[0])
    elif event in ("os.rename", "os.symlink", "os.link"):  # os.replace raises os.rename
        written(args[1])


read = TokenDataset.__getitem__


def traced_read(self: TokenDataset, index: int) -> dict[str, Any]:
    note("sample", int(index))
    return read(self, index)


save = torch.save


def traced_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
    written(f)
    save(obj, f, *args, **kwargs)


TokenDataset.__getitem__ = traced_read
torch.save = traced_save
sys.addaudithook(audit)
sys.argv[0] = "wordybird"
main()
