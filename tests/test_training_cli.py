"""`wordybird train / continue / masks` end to end, in real subprocesses (tiny model)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from safetensors.torch import load_file

import wordybird
from test_recorder import same_bits
from wordybird.recorder.format import is_recording

WORDYBIRD = str(Path(sys.executable).with_name("wordybird"))
TINY = ["--n-embd", "8", "--n-layer", "1", "--n-head", "1", "--n-positions", "16"]
#: A run to kill and resume many times: short, with a checkpoint every 5 steps.
KILLED_RUN_STEPS = 40
KILLED_RUN = [
    "--steps", str(KILLED_RUN_STEPS), "--batch-size", "2", "--checkpoint-every", "5", *TINY,
]  # fmt: skip


def wordybird_cli(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WORDYBIRD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def write_corpus(path: Path) -> Path:
    """A toy corpus: a few words over and over."""
    path.write_text(" ".join(f"word{i % 37} the cat" for i in range(800)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "toy.txt")


def test_train_then_continue(corpus: Path, tmp_path: Path) -> None:
    wb1, wb3 = tmp_path / "wb1", tmp_path / "wb3"
    done = wordybird_cli(
        "train", "--corpus", corpus, "--steps", "3", "--batch-size", "2", "--out", wb1, *TINY
    )
    assert done.returncode == 0, done.stderr
    # the summary is the output; the progress bar, with the loss, goes to stderr
    assert done.stdout.startswith("Training complete: steps 1-3"), done.stdout
    assert "Loss: step 1" in done.stdout and "Untrained-token displacement" in done.stdout
    assert "loss=" in done.stderr
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


def test_continue_inherits_its_run(corpus: Path, tmp_path: Path) -> None:
    """Without settings, `continue` goes on with its run's corpus, batch size, seed and
    recording mode: from checkpoint-2 of a 3-step run it trains step 3 on the same batch as
    the run did, bit-exact. A flag overrides; the command says where each setting came from."""
    wb1, wb3, wb3b = tmp_path / "wb1", tmp_path / "wb3", tmp_path / "wb3b"
    done = wordybird_cli(
        "train", "--corpus", corpus, "--steps", "3", "--checkpoint-every", "2",
        "--batch-size", "2", "--seed", "7", "--mode", "predictive", "--out", wb1, *TINY,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    done = wordybird_cli(
        "continue", wb1 / "checkpoint-2", "--steps", "1", "--schedule", "continue", "--out", wb3
    )
    assert done.returncode == 0, done.stderr
    assert "| 2/3 [" in done.stderr and "| 0/3 [" not in done.stderr  # the bar starts at 2
    assert done.stdout.splitlines()[:4] == [
        f"corpus: {corpus.resolve()} (from the checkpoint's run)",
        "batch size: 2 (from the checkpoint's run)",
        "seed: 7 (from the checkpoint's run)",
        "recording mode: predictive (from the checkpoint's run)",
    ]
    with (
        wordybird.open(wb3 / "recording.zarr") as got,
        wordybird.open(wb1 / "recording.zarr") as want,
    ):
        assert got.mode == "predictive"
        # the real Adam state goes on: its step count is the step number, as in the run
        prediction = json.loads((wb3 / "recording.zarr" / "zarr.json").read_text())
        momentum = prediction["attributes"]["wordybird"]["fields"]["momentum"]
        assert momentum["encoding"] == "predicted"
        assert momentum["prediction"]["constants"]["step_offset"] == 0
        assert got.metadata["corpus"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
        assert got.steps.tolist() == [2, 3] and want.steps.tolist() == [0, 1, 2, 3]
        for name in want.fields:
            assert same_bits(got[name][1], want[name][3]), name

    done = wordybird_cli("continue", wb1 / "checkpoint-2", "--steps", "1", "--batch-size", "3",
                         "--out", wb3b)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "batch size: 3 (from --batch-size)" in done.stdout.splitlines()
    assert "seed: 7 (from the checkpoint's run)" in done.stdout.splitlines()
    assert json.loads((wb3b / "run.json").read_text())["config"]["batch_size"] == 3
    with (
        wordybird.open(wb3b / "recording.zarr") as got,
        wordybird.open(wb1 / "recording.zarr") as want,
    ):
        assert got.metadata["hyperparameters"]["batch_size"] == 3
        assert not same_bits(got["grads"][1], want["grads"][3])  # a batch of 3, not of 2


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
    assert message.startswith("error: interrupted after step ")
    assert message.endswith(f"continue with `wordybird train --resume --out {out}`")
    step = int(message.split("interrupted after step ")[1].split(":")[0])
    assert (out / f"checkpoint-{step}" / "optimizer.pt").is_file()
    with wordybird.open(out / "recording.zarr") as rec:
        assert rec.steps.tolist() == list(range(step + 1))


# -- kill -9 at random moments ---------------------------------------------------------------


def header_changed(run: Path) -> Callable[[], bool]:
    """A test of whether the run's recording header has changed since now (created, rewritten
    or removed): the sign that a process started now has reached the recording."""
    header = run / "recording.zarr" / "zarr.json"

    def stamp() -> int | None:
        try:
            return header.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    before = stamp()
    return lambda: stamp() != before


def start_train(run: Path, corpus: Path, mode: str, log: IO[str]) -> subprocess.Popen[bytes]:
    """Resume the run in ``run`` if it can be (it has a complete checkpoint) and is not
    complete, else start it over; return once the process has reached the recording."""
    checkpoint = last_checkpoint(run)
    if checkpoint is not None and checkpoint < KILLED_RUN_STEPS and (run / "run.json").is_file():
        command = [WORDYBIRD, "train", "--resume", "--out", str(run)]
    else:
        command = [WORDYBIRD, "train", "--corpus", str(corpus), "--out", str(run)]
        command += ["--mode", mode, "--overwrite", *KILLED_RUN]
    reached = header_changed(run)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while not reached() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return process


def last_checkpoint(run: Path) -> int | None:
    """The step of the run's last complete checkpoint (the Trainer writes trainer_state.json
    last), if any."""
    return max(
        (
            int(path.name.removeprefix("checkpoint-"))
            for path in run.glob("checkpoint-*")
            if (path / "trainer_state.json").is_file()
        ),
        default=None,
    )


def check_run(run: Path, reference: Path, *, whole: bool) -> None:
    """The run's committed steps are 0..n-1, each bit-exact the uninterrupted run's, and
    reach its last complete checkpoint (all of the reference's steps if ``whole``)."""
    with (
        wordybird.open(run / "recording.zarr") as got,
        wordybird.open(reference / "recording.zarr") as want,
    ):
        n = len(got)
        assert got.steps.tolist() == list(range(n))
        assert n == len(want) if whole else n <= len(want)
        checkpoint = last_checkpoint(run)
        assert checkpoint is None or checkpoint < n, (
            f"checkpoint-{checkpoint} is ahead of the recording's {n} committed steps"
        )
        if n:  # a run killed before its first step was committed has no field yet
            assert got.fields == want.fields
            for name in want.fields:
                assert same_bits(got[name][0:n], want[name][0:n]), name


def reference_run(reference: Path, corpus: Path, mode: str) -> float:
    """Run the killed runs' settings uninterrupted; return the seconds from the moment it
    reached its recording to its end (the span random kills are drawn from)."""
    with reference.with_suffix(".log").open("w") as log:
        process = start_train(reference, corpus, mode, log)
        started = time.monotonic()
        assert process.wait(timeout=600) == 0, reference.with_suffix(".log").read_text()
    return time.monotonic() - started


def kill_train_and_check(
    run: Path, reference: Path, corpus: Path, mode: str, kill_at: float
) -> bool:
    """Resume (or start) `wordybird train` in ``run``, SIGKILL it ``kill_at`` seconds after
    it reached the recording, then check the run against the uninterrupted ``reference``.

    After a kill the recording must reach the last complete checkpoint (the recorder is
    flushed before each checkpoint: that is what a kill may not lose, as the resume goes
    on from there), and every committed step must equal the reference's, bit-exact (the
    Trainer restores the data order and RNG state, so a resumed run repeats it). A run
    that completes before the kill is checked whole (and the next call starts it over).
    Returns whether the process was killed.
    """
    log_path = run.with_suffix(".log")
    with log_path.open("w") as log:
        process = start_train(run, corpus, mode, log)
        try:
            process.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    killed = process.returncode == -signal.SIGKILL
    assert killed or process.returncode == 0, log_path.read_text()[-3000:]
    if (run / "run.json").is_file() and is_recording(run / "recording.zarr"):
        check_run(run, reference, whole=not killed)
    return killed


def finish_and_check(run: Path, reference: Path, corpus: Path, mode: str) -> None:
    """Let the killed run finish uninterrupted: it equals the reference, bit-exact."""
    if last_checkpoint(run) == KILLED_RUN_STEPS:
        check_run(run, reference, whole=True)
    else:
        assert not kill_train_and_check(run, reference, corpus, mode, kill_at=600)


@pytest.mark.slow
def test_random_kills_of_train_then_resume_equal_an_uninterrupted_run(
    corpus: Path, tmp_path: Path
) -> None:
    """10 kills -9 of `wordybird train` at random moments, each followed by `train --resume`
    (or a new start when no checkpoint was written yet)."""
    rng = random.Random(7)
    window = reference_run(tmp_path / "reference", corpus, "default")
    kills = 0
    while kills < 10:
        kills += kill_train_and_check(
            tmp_path / "run", tmp_path / "reference", corpus, "default", rng.uniform(0, window)
        )
    finish_and_check(tmp_path / "run", tmp_path / "reference", corpus, "default")
