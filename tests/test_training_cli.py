"""`wordybird train / continue / masks` end to end, in real subprocesses (tiny model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import wordybird

WORDYBIRD = str(Path(sys.executable).with_name("wordybird"))
TINY = ["--n-embd", "8", "--n-layer", "1", "--n-head", "1", "--n-positions", "16"]


def wordybird_cli(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WORDYBIRD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    path.write_text(" ".join(f"word{i % 37} the cat" for i in range(800)), encoding="utf-8")
    return path


def test_train_then_continue(corpus: Path, tmp_path: Path) -> None:
    wb1, wb3 = tmp_path / "wb1", tmp_path / "wb3"
    done = wordybird_cli(
        "train", "--corpus", corpus, "--steps", "3", "--batch-size", "2", "--out", wb1, *TINY
    )
    assert done.returncode == 0, done.stderr
    assert "Loss: step 1" in done.stdout and "Untrained-token displacement" in done.stdout
    for name in ("recording.zarr", "token_masks.safetensors", "summary.json", "checkpoint-3"):
        assert (wb1 / name).exists(), name

    done = wordybird_cli(
        "continue", wb1 / "checkpoint-3", "--steps", "2", "--batch-size", "2",
        "--corpus", corpus, "--out", wb3, *TINY,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with wordybird.open(wb3 / "recording.zarr") as rec:
        assert rec.steps.tolist() == [3, 4, 5]
    assert (wb3 / "checkpoint-5").is_dir()

    again = wordybird_cli("train", "--corpus", corpus, "--out", wb1, *TINY)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "--overwrite" in again.stderr
    assert len(again.stderr.splitlines()) == 1, again.stderr


def test_masks_command(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks.safetensors"
    done = wordybird_cli("masks", "--corpus", corpus, "--out", out)
    assert done.returncode == 0, done.stderr
    masks = load_file(str(out))
    assert set(masks) == {"trained_mask", "untrained_mask", "trained_indices", "untrained_indices"}
    assert int(masks["trained_mask"].sum()) == len(masks["trained_indices"]) > 0


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--steps", "0", "--out", "a"],
        ["train", "--corpus", "missing.txt", "--out", "b"],
        ["continue", "no-such-checkpoint", "--out", "c"],
        ["masks", "--corpus", "missing.txt", "--out", "m.safetensors"],
    ],
)
def test_bad_input_exits_1_with_one_line(args: list[str], tmp_path: Path) -> None:
    done = wordybird_cli(*args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not any(tmp_path.iterdir())  # no run folder, no half-written file


def test_ctrl_c_keeps_steps_and_writes_a_checkpoint(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = subprocess.Popen(
        [WORDYBIRD, "train", "--corpus", str(corpus),
         "--steps", "100000", "--batch-size", "2", "--out", str(out), *TINY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "recording.zarr").exists() and len(
                wordybird.open(out / "recording.zarr")
            ) > 2:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    assert process.returncode == 1, stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: interrupted after step ") and "--resume" in message
    step = int(message.split("interrupted after step ")[1].split(":")[0])
    assert (out / f"checkpoint-{step}" / "optimizer.pt").is_file()
    with wordybird.open(out / "recording.zarr") as rec:
        assert rec.steps.tolist() == list(range(step + 1))
