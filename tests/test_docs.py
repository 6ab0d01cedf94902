"""What the documentation shows runs, and what wordybird borrows from its dependencies is
still there."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import pytest
import torch

import wordybird
from wordybird import opening


def example_of(documented: object) -> str:
    """The code of an ``Example::`` block of a docstring."""
    doc = documented.__doc__ or ""
    assert "Example::" in doc, f"{documented} shows no example"
    block = doc.split("Example::", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith(" " * 8):
            break  # the docstring's next section
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.parametrize("documented", [wordybird.StreamingRecorder, opening.open])
def test_examples_run(documented: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "wb1"
    run.mkdir(parents=True)
    with wordybird.StreamingRecorder(run / "recording.zarr") as rec:  # what `train` leaves
        rec.record(0, {"embeddings": torch.zeros(300, 8, dtype=torch.bfloat16)})
    exec(compile(example_of(documented), f"<example of {documented}>", "exec"), {})


def test_the_private_hooks_wordybird_relies_on_are_there() -> None:
    """A recorder nobody closed is closed through ``threading._register_atexit``, which runs
    before concurrent.futures refuses new work at exit (``atexit`` runs too late): if a
    Python release removes it, this says so first."""
    assert callable(getattr(threading, "_register_atexit", None))
