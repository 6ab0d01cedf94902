"""Damaged recordings: ``wordybird check``, the reader and export name the damage and keep
reading the rest. Four kinds of damage: a flipped byte, a truncated chunk, a deleted chunk
and a field's broken metadata JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import wordybird
from run_cli import run_cli
from wordybird import StreamingRecorder, WordybirdError
from wordybird.recorder.check import check_recording

MODES = ["default", "compact"]
STEPS = 20  # past compact mode's first keyframe interval (16)
FLIPPED, TRUNCATED, DELETED = 5, 8, 11  # positions of the damaged chunks of "w"


def step_number(position: int) -> int:
    return 100 + 10 * position


def tensors(position: int) -> dict[str, torch.Tensor]:
    """Fields over the 16 KiB small-field limit (one chunk per step) and a small one."""
    g = torch.Generator().manual_seed(position)
    base = torch.randn(4000, 64, generator=torch.Generator().manual_seed(0))
    return {
        "w": (base + 1e-3 * position * torch.randn(4000, 64, generator=g)).bfloat16(),
        "g": torch.randn(4000, 64, generator=g).bfloat16(),
        "losses": torch.tensor(1.0 / (position + 1)).bfloat16(),
    }


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


def record(path: Path, mode: str) -> Path:
    with StreamingRecorder(path, mode=mode, metadata={"learning_rate": 1e-3}) as rec:
        for position in range(STEPS):
            rec.record(step_number(position), tensors(position))
    return path


def chunk_of(path: Path, field: str, position: int) -> Path:
    (chunk,) = [p for p in (path / field / "c" / str(position)).rglob("*") if p.is_file()]
    return chunk


def damage(path: Path) -> None:
    flipped = chunk_of(path, "w", FLIPPED)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x10
    flipped.write_bytes(bytes(data))
    truncated = chunk_of(path, "w", TRUNCATED)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    chunk_of(path, "w", DELETED).unlink()
    (path / "g" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')


def unreadable_positions(mode: str) -> set[int]:
    """Compact mode decodes a step from its keyframe through every delta before it."""
    if mode == "default":
        return {FLIPPED, TRUNCATED, DELETED}
    return set(range(FLIPPED, 16))


@pytest.fixture(params=MODES)
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    path = record(tmp_path / f"{request.param}.zarr", request.param)
    damage(path)
    return path, request.param


def test_a_sound_recording_checks_ok(tmp_path: Path) -> None:
    path = record(tmp_path / "r.zarr", "compact")
    assert check_recording(path)["damaged"] == []
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr
    assert f"ok, {STEPS} committed step(s) of 4 arrays read and checksummed" in result.stdout


def test_check_lists_every_damaged_field_and_step(damaged: tuple[Path, str]) -> None:
    path, mode = damaged
    report = check_recording(path)
    found = {
        (d["field"], p)
        for d in report["damaged"]
        for p in range(d["first_position"], d["last_position"] + 1)
    }
    assert found == {("w", p) for p in unreadable_positions(mode)} | {
        ("g", p) for p in range(STEPS)
    }
    reasons = {d["field"]: d["reason"] for d in report["damaged"]}
    assert "metadata" in reasons["g"]
    for d in report["damaged"]:
        if d["field"] == "w":
            assert d["steps"] == [
                step_number(p) for p in range(d["first_position"], d["last_position"] + 1)
            ]
    result = run_cli("check", str(path))
    assert result.returncode == 1
    assert "DAMAGED" in result.stdout
    assert f"w: step {step_number(DELETED)}" in result.stdout or mode == "compact"
    assert "is missing" in result.stdout
    as_json = json.loads(run_cli("check", "--json", str(path)).stdout)
    assert as_json["damaged"] == report["damaged"]


def test_the_reader_names_the_damage_and_reads_the_rest(damaged: tuple[Path, str]) -> None:
    path, mode = damaged
    bad = unreadable_positions(mode)
    with wordybird.open(path) as rec:
        for position in range(STEPS):
            if position in bad:
                match = rf"field 'w' at step {step_number(position)} .*damaged"
                if mode == "compact":  # named: the first damaged chunk on the way
                    match = rf"field 'w' at step {step_number(FLIPPED)} .*damaged"
                with pytest.raises(WordybirdError, match=match):
                    rec["w"][position]
            else:
                assert same_bits(rec["w"][position], tensors(position)["w"])
        with pytest.raises(WordybirdError, match="field 'g' cannot be opened"):
            rec["g"][0]
        assert same_bits(
            rec["losses"][:], torch.stack([tensors(p)["losses"] for p in range(STEPS)])
        )


def test_a_deleted_chunk_is_not_read_as_zeros(tmp_path: Path) -> None:
    path = record(tmp_path / "r.zarr", "default")
    chunk_of(path, "w", 3).unlink()
    with wordybird.open(path) as rec, pytest.raises(WordybirdError, match="w/c/3/0/0 is missing"):
        rec["w"][3]


def test_export_refuses_damage_unless_told_to_skip_it(
    damaged: tuple[Path, str], tmp_path: Path
) -> None:
    path, mode = damaged
    out = tmp_path / "x.safetensors"
    with pytest.raises(WordybirdError, match="damaged.*--skip-damaged"):
        wordybird.export(path, out, fields="w,losses")
    assert not out.exists()
    wordybird.export(path, out, fields="w,losses", skip_damaged=True)
    kept = [p for p in range(STEPS) if p not in unreadable_positions(mode)]
    loaded = load_file(str(out))
    assert loaded["recorded_steps"].tolist() == [step_number(p) for p in kept]
    for row, position in enumerate(kept):
        assert same_bits(loaded["w"][row], tensors(position)["w"])
    with wordybird.open(out) as exported:
        skipped = [step_number(p) for p in sorted(unreadable_positions(mode))]
        assert exported.metadata["skipped_damaged_steps"] == skipped
    # the CLI says the same, in one line, and exits 1
    refused = run_cli("export", str(path), str(tmp_path / "y.safetensors"), "--fields", "w")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error:") and len(refused.stderr.strip().splitlines()) == 1
    assert "--skip-damaged" in refused.stderr
