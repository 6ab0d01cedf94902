"""Full-size runs (the notebook's shapes and configuration): `pytest -m slow`.

The fast suite uses tiny shapes; these check that nothing depends on them: a recording of
[50257, 64] bf16 fields in both modes, exported and read back bit-exact, and the real
`wordybird train` configuration end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import wordybird
from wordybird import StreamingRecorder

pytestmark = pytest.mark.slow

VOCAB, DIM, STEPS = 50257, 64, 20


def notebook_step(step: int) -> dict[str, torch.Tensor]:
    """A training-like step: a slow bf16 walk, so steps share most of their bits."""
    g = torch.Generator().manual_seed(1000 + step)
    base = torch.Generator().manual_seed(7)
    weights = torch.randn(VOCAB, DIM, generator=base) * 0.02
    weights += torch.randn(VOCAB, DIM, generator=g) * 1e-4 * step
    return {
        "embeddings": weights.bfloat16(),
        "grads": (torch.randn(VOCAB, DIM, generator=g) * 1e-5).bfloat16(),
        "momentum": (torch.randn(VOCAB, DIM, generator=g) * 1e-6).bfloat16(),
        "variance": (torch.rand(VOCAB, DIM, generator=g) * 1e-10).bfloat16(),
        "logits": torch.randn(VOCAB, generator=g).bfloat16(),
        "losses": torch.tensor(10.0 - step * 0.1).bfloat16(),
    }


@pytest.mark.parametrize("mode", ["default", "compact"])
def test_notebook_shapes_round_trip_through_store_and_export(tmp_path: Path, mode: str) -> None:
    store = tmp_path / "r.zarr"
    with StreamingRecorder(store, mode=mode, metadata={"learning_rate": 1e-3}) as rec:
        for step in range(STEPS):
            rec.record(100 + step, notebook_step(step))
    out = wordybird.export(store, tmp_path / "r.safetensors")
    loaded = load_file(out)
    assert loaded["recorded_steps"].tolist() == list(range(100, 100 + STEPS))
    assert loaded["embeddings"].shape == (STEPS, VOCAB, DIM)
    assert loaded["learning_rate"].item() == pytest.approx(1e-3)
    for source in (wordybird.open(store), wordybird.open(out)):
        for position in (0, 7, STEPS - 1):
            expected = notebook_step(position)
            got = source.at_step(100 + position)
            for field, value in expected.items():
                assert torch.equal(got[field].view(torch.int16), value.view(torch.int16))
                assert torch.equal(
                    loaded[field][position].view(torch.int16), value.view(torch.int16)
                )


def test_wordybird_train_at_the_notebooks_configuration(tmp_path: Path) -> None:
    """Two real steps of WB1 (batch 32, full vocabulary) through the CLI."""
    run = tmp_path / "wb1"
    result = subprocess.run(
        [sys.executable, "-m", "wordybird.cli", "train", "--steps", "2", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    rec = wordybird.open(run / "recording.zarr")
    assert list(rec.steps) == [0, 1, 2]
    assert rec["embeddings"].shape == (3, VOCAB, DIM)
    assert rec["embeddings"].dtype == torch.bfloat16
    assert torch.isnan(rec["losses"][0])
    assert not torch.equal(rec["embeddings"][0], rec["embeddings"][2])
    assert (run / "checkpoint-2").is_dir()
