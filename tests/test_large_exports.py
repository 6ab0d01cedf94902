"""Exports too large for RAM: files larger than the machine's memory, and split exports."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

import wordybird
from run_cli import run_cli
from wordybird import StreamingRecorder, WordybirdError
from wordybird.inspection import inspect_recording

STEPS = 20
SCALARS = {"learning_rate": 1e-3, "n_trained": 7, "starting_step": 0}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality, NaN included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.reshape(-1).view(torch.uint8).numpy().tobytes() == (
        b.reshape(-1).view(torch.uint8).numpy().tobytes()
    )


# -- a file larger than RAM ---------------------------------------------------------------------


def sparse_export(path: Path, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A notebook-layout file of ``steps`` bf16 steps, written sparse: only its header,
    ``recorded_steps`` and its last step hold data; the rest is a hole. Returns the last step.

    The header is written by hand (not by wordybird's writer) so the reader is checked
    against the format, not against itself.
    """
    step_nbytes = math.prod(shape) * 2
    steps_nbytes = steps * 8
    header = {
        "__metadata__": {"note": json.dumps("sparse")},
        "recorded_steps": {"dtype": "I64", "shape": [steps], "data_offsets": [0, steps_nbytes]},
        "embeddings": {
            "dtype": "BF16",
            "shape": [steps, *shape],
            "data_offsets": [steps_nbytes, steps_nbytes + steps * step_nbytes],
        },
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    last = torch.randn(shape, generator=torch.Generator().manual_seed(7)).bfloat16()
    data_start = 8 + len(text)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.write(torch.arange(steps, dtype=torch.int64).mul(10).numpy().tobytes())
        f.seek(data_start + steps_nbytes + (steps - 1) * step_nbytes)
        f.write(last.view(torch.uint8).numpy().tobytes())
        f.truncate(data_start + steps_nbytes + steps * step_nbytes)
    return last


def test_a_file_larger_than_ram_opens_lists_and_reads_its_last_step(tmp_path: Path) -> None:
    shape = (50257, 64)  # one notebook-sized step: 6.4 MB
    step_nbytes = math.prod(shape) * 2
    memory = psutil.virtual_memory().total + psutil.swap_memory().total
    steps = (memory + (2 << 30)) // step_nbytes
    path = tmp_path / "huge.safetensors"
    last = sparse_export(path, steps, shape)
    assert path.stat().st_size > memory  # the premise: no private mapping of it can succeed
    assert path.stat().st_blocks * 512 < 100 << 20  # and the test wrote almost none of it

    process = psutil.Process()
    before = process.memory_info().rss
    with wordybird.open(path) as rec:
        assert len(rec) == steps
        assert rec.steps[-1] == 10 * (steps - 1)
        assert rec.metadata == {"note": "sparse"}
        got = rec["embeddings"][-1]
        assert same_bits(got, last)
        assert not torch.any(rec["embeddings"][steps // 2].view(torch.int16))  # the hole
        # bounded by the step read, not the file: a few steps' worth at most
        assert process.memory_info().rss - before < 8 * step_nbytes
    report = inspect_recording(path)
    assert report["steps"]["count"] == steps
    assert report["size_on_disk"] == path.stat().st_size
    # a step range of it exports to a small file that holds exactly those steps
    out = wordybird.export(path, tmp_path / "tail.safetensors", steps=f"{10 * (steps - 2)}:")
    tail = load_file(str(out))
    assert tail["recorded_steps"].tolist() == [10 * (steps - 2), 10 * (steps - 1)]
    assert same_bits(tail["embeddings"][1], last)


def test_a_truncated_file_is_refused_with_its_sizes(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    sparse_export(path, 4, (8, 8))
    full = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(full - 1)
    with pytest.raises(WordybirdError, match=rf"announces {full:,} bytes.*\(truncated\)"):
        wordybird.open(path)


# -- split exports -------------------------------------------------------------------------------


def step_tensors(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {
        "embeddings": torch.randn(30, 4, generator=g).bfloat16(),
        "momentum": torch.randn(30, 4, generator=g).bfloat16(),
        "logits": torch.randn(30, generator=g).bfloat16(),
        "losses": torch.tensor(1.0 / (step + 1)).bfloat16(),
        "learning_rates": torch.tensor(1e-3 * step, dtype=torch.float32),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("split") / "run.zarr"
    with StreamingRecorder(path, metadata={**SCALARS, "seed": 3}) as rec:
        for step in range(STEPS):
            rec.record(100 + step, step_tensors(step))
    return path


def test_split_export_is_files_in_the_notebooks_layout_and_reads_as_one(
    tmp_path: Path, store: Path
) -> None:
    out = tmp_path / "wb.safetensors"
    index = wordybird.export(store, out, steps_per_file=6)
    assert index == tmp_path / "wb.safetensors.index.json"
    names = [f"wb-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, index.name])
    assert not out.exists()
    whole = load_file(str(wordybird.export(store, tmp_path / "whole.safetensors")))
    listed = json.loads(index.read_text())["files"]
    for i, name in enumerate(names):
        part = load_file(str(tmp_path / name))
        assert part.keys() == whole.keys()
        span = slice(6 * i, min(6 * i + 6, STEPS))
        assert part["recorded_steps"].tolist() == list(range(100 + span.start, 100 + span.stop))
        for key, value in part.items():
            assert same_bits(value, whole[key] if value.dim() == 0 else whole[key][span])
        assert listed[i] == {
            "name": name,
            "first_step": 100 + span.start,
            "last_step": 100 + span.stop - 1,
            "count": span.stop - span.start,
            "nbytes": (tmp_path / name).stat().st_size,
        }
    with wordybird.open(store) as original:
        for path in (index, out):  # the index, or the name the export was given
            with wordybird.open(path) as rec:
                assert rec.format == "safetensors-split"
                assert rec.steps.tolist() == original.steps.tolist()
                assert rec.metadata == original.metadata
                for field in original.fields:
                    assert same_bits(rec[field][:], original[field][:])
                    assert same_bits(rec[field][4:15], original[field][4:15])  # three files
                    assert same_bits(rec[field][-1], original[field][-1])
                    assert rec[field][7:7].shape[0] == 0
                assert same_bits(rec.at_step(113)["momentum"], original.at_step(113)["momentum"])


def test_max_file_size_packs_as_many_steps_as_fit(tmp_path: Path, store: Path) -> None:
    one = wordybird.export(store, tmp_path / "one.safetensors", steps="100:101").stat().st_size
    seven = wordybird.export(store, tmp_path / "seven.safetensors", steps="100:107")
    limit = seven.stat().st_size + (seven.stat().st_size - one) // 6 - 1  # 7 fit, 8 do not
    index = wordybird.export(store, tmp_path / "s.safetensors", max_file_size=limit)
    with wordybird.open(index) as rec:
        sizes = [f.stat().st_size for f in rec.files]
        assert [len(load_file(str(f))["recorded_steps"]) for f in rec.files] == [7, 7, 6]
    assert max(sizes) <= limit
    with pytest.raises(WordybirdError, match="cannot hold one step"):
        wordybird.export(store, tmp_path / "tiny.safetensors", max_file_size=one - 1)
    index = wordybird.export(store, tmp_path / "u.safetensors", max_file_size="1 MiB")
    with wordybird.open(index) as rec:
        assert len(rec.files) == 1 and len(rec) == STEPS


def test_split_export_refuses_to_clobber_and_overwrite_removes_replaced_files(
    tmp_path: Path, store: Path
) -> None:
    out = tmp_path / "x.safetensors"
    wordybird.export(store, out, steps_per_file=5)
    with pytest.raises(WordybirdError, match="already exists"):
        wordybird.export(store, out, steps_per_file=5)
    wordybird.export(store, out, steps_per_file=10, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x-00001-of-00002.safetensors",
        "x-00002-of-00002.safetensors",
        "x.safetensors.index.json",
    ]
    with wordybird.open(out) as rec:
        assert len(rec) == STEPS


def test_split_export_files_that_do_not_belong_together_are_refused(
    tmp_path: Path, store: Path
) -> None:
    index = wordybird.export(store, tmp_path / "x.safetensors", steps_per_file=8)
    second = tmp_path / "x-00002-of-00003.safetensors"
    wordybird.export(store, second, steps="100:108", overwrite=True)
    with pytest.raises(WordybirdError, match="do not belong together"):
        wordybird.open(index)
    second.unlink()
    with pytest.raises(WordybirdError, match="x-00002-of-00003.safetensors does not exist"):
        wordybird.open(index)
    index.write_text('{"format": "something else"}')
    with pytest.raises(WordybirdError, match="not a wordybird split-export index"):
        wordybird.open(index)
    with pytest.raises(WordybirdError, match="either steps_per_file or max_file_size"):
        wordybird.export(store, tmp_path / "y.safetensors", steps_per_file=2, max_file_size=9)
    with pytest.raises(WordybirdError, match="not a size"):
        wordybird.export(store, tmp_path / "y.safetensors", max_file_size="4 parsecs")


def test_cli_split_export_inspect_and_reexport(tmp_path: Path, store: Path) -> None:
    out = tmp_path / "wb.safetensors"
    done = run_cli("export", "-q", str(store), str(out), "--steps-per-file", "8")
    assert done.returncode == 0, done.stderr
    assert "wrote 3 files" in done.stdout
    shown = run_cli("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "safetensors-split (3 files)" in shown.stdout
    assert f"{STEPS} recorded, 100..{100 + STEPS - 1}" in shown.stdout
    # the split set exports back to one file equal to a direct export
    again = run_cli("export", "-q", str(out), str(tmp_path / "one.safetensors"))
    assert again.returncode == 0, again.stderr
    direct = wordybird.export(store, tmp_path / "direct.safetensors")
    assert (tmp_path / "one.safetensors").read_bytes() == direct.read_bytes()
    bad = run_cli("export", str(store), str(tmp_path / "z.safetensors"), "--max-file-size", "10")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error:") and "cannot hold one step" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
