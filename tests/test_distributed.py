"""Recording under multi-process training: torchrun with gloo on CPU, two processes.

The same Trainer run (tests/ddp_trainer.py: a tiny GPT-2, no dropout, samples in order) is
recorded once by one process with the whole global batch and once by two processes with
half of it each. Only the main process writes; the gradient it records is the one the
optimizer used, averaged across the processes (before clipping), so the two recordings
agree: exactly where no reduction is involved (losses, logits, the step and learning rate
counters), and to float32 rounding where the two runs sum in different orders (a mean of 4
samples against the mean of two means of 2): at most 3.6e-6 of a field's largest magnitude,
measured; the main process's own half-batch gradient would be off by tens of percent.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wordybird
from test_recorder import same_bits

SCRIPT = Path(__file__).with_name("ddp_trainer.py")
GLOBAL_BATCH = 4


def run_script(out: Path, processes: int) -> None:
    out.mkdir()
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(out), str(GLOBAL_BATCH)]
    else:
        torchrun = shutil.which("torchrun") or pytest.fail("torchrun is not on PATH")
        command = [torchrun, "--standalone", f"--nproc_per_node={processes}"]
        command += [str(SCRIPT), str(out), str(GLOBAL_BATCH)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_processes_record_what_one_process_with_the_same_global_batch_records(
    tmp_path: Path,
) -> None:
    run_script(tmp_path / "one", 1)
    run_script(tmp_path / "two", 2)
    # exactly one store, written by the main process only
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["rec.zarr", "trainer"]
    with (
        wordybird.open(tmp_path / "one" / "rec.zarr") as one,
        wordybird.open(tmp_path / "two" / "rec.zarr") as two,
    ):
        assert one.fields == two.fields
        assert one.steps.tolist() == two.steps.tolist() == [0, 1, 2, 3, 4]
        assert float(one["grad_norms"][1]) > 0.5  # the run clips at 0.5: recorded pre-clip
        exact = {"losses", "logits", "transformer.wte.weight/step", "transformer.wte.weight/lr"}
        for field in one.fields:
            a, b = one[field][:].nan_to_num(), two[field][:].nan_to_num()
            if field in exact:
                assert torch.equal(a, b), field
            else:  # fp32 rounding, relative to the field's scale
                assert (a - b).abs().max() <= 1e-5 * a.abs().max(), field


# -- `wordybird train` / `continue` as several processes --------------------------------------

TRACED = Path(__file__).with_name("traced_wordybird.py")
WORDYBIRD = str(Path(sys.executable).with_name("wordybird"))
#: 4 steps of a tiny model without dropout (each process would draw its own masks), with a
#: checkpoint at step 2 to resume and continue from; --batch-size is the global batch.
STEPS, BATCH = 4, 4
RUN = [
    "train", "--steps", str(STEPS), "--batch-size", str(BATCH), "--checkpoint-every", "2",
    "--dropout", "0", "--n-embd", "8", "--n-layer", "1", "--n-head", "1", "--n-positions", "16",
]  # fmt: skip
#: Fields that no reduction across processes reaches: the loss is all-reduced too, but its
#: bf16 rounding hides the float32 difference (so far; asserted here).
EXACT = {"losses", "learning_rates"}
#: Bound on every other field, in bf16 ULPs of the field's largest magnitude at that step.
#: DDP averages the bf16 gradients in bf16, each process's gradient rounded before the sum,
#: one process's after it: the step-1 gradient differs by 1 ULP; Adam's variance (squared
#: gradients) by 2 and every other field by 1, in steps 1-4 (measured).
ULPS = 4


def launch(
    command: list[str], processes: int, trace: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` (a script and its arguments) in one process, or under torchrun; with
    ``trace``, the folder where traced_wordybird.py writes its traces."""
    if processes > 1:
        torchrun = shutil.which("torchrun") or pytest.fail("torchrun is not on PATH")
        command = [torchrun, "--standalone", f"--nproc_per_node={processes}", *command]
    else:
        command = [sys.executable, *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if trace is not None:
        trace.mkdir()
        env["TRACE_DIR"] = str(trace)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def trace_of(trace: Path, rank: int, kind: str) -> list:
    lines = (trace / f"rank-{rank}.jsonl").read_text().splitlines()
    return [entry[kind] for entry in map(json.loads, lines) if kind in entry]


def bf16_ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference between ``a`` and ``b`` in bf16 ULPs of ``a``'s largest
    magnitude."""
    a, b = a.float().nan_to_num(), b.float().nan_to_num()
    largest = a.abs().max().item()
    if largest == 0:
        return 0.0 if torch.equal(a, b) else math.inf
    return (a - b).abs().max().item() / 2.0 ** (math.floor(math.log2(largest)) - 7)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`wordybird train` once in one process and once as two (torchrun), traced, on a corpus
    of random words (no two training windows alike: a sample shows in what it trains)."""
    root = tmp_path_factory.mktemp("runs")
    words = random.Random(0).choices(["the", "cat", "sat", "on", "a", "mat", "dog", "ran"], k=3000)
    (root / "corpus.txt").write_text(" ".join(f"{w}{i % 7}" for i, w in enumerate(words)))
    for name, processes in (("one", 1), ("two", 2)):
        args = [*RUN, "--corpus", root / "corpus.txt", "--out", root / name]
        done = launch([str(TRACED), *map(str, args)], processes, root / f"trace-{name}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (root / f"{name}.out").write_text(done.stdout)
    return root


def test_wordybird_train_as_two_processes_records_what_one_process_records(runs: Path) -> None:
    one, two = runs / "one", runs / "two"
    # the same samples in every global batch, in the same order: the first half in process
    # 0, the second in process 1 (each reads one batch ahead: only the trained ones count)
    whole = trace_of(runs / "trace-one", 0, "sample")
    halves = [trace_of(runs / "trace-two", rank, "sample") for rank in (0, 1)]
    half = BATCH // 2
    assert whole[:BATCH] != list(range(whole[0], whole[0] + BATCH))  # shuffled, not in order
    for step in range(STEPS):
        batch = [i for h in halves for i in h[step * half : (step + 1) * half]]
        assert batch == whole[step * BATCH : (step + 1) * BATCH], step

    # one store; the same files as one process's run, but a random state per process; the
    # other process writes nothing in the run folder but its own random state
    def files(run: Path) -> set[str]:
        return {str(p.relative_to(run)) for p in run.rglob("*") if "recording.zarr" not in p.parts}

    def states(names: list[str]) -> set[str]:
        return {f"checkpoint-{s}/{name}" for s in (2, 4) for name in names}

    assert files(two) - states(["rng_state_0.pth", "rng_state_1.pth"]) == (
        files(one) - states(["rng_state.pth"])
    )
    writes = [{p for p in trace_of(runs / "trace-two", r, "write") if p.startswith(str(two))}
              for r in (0, 1)]  # fmt: skip
    assert writes[1] == {str(two / name) for name in states(["rng_state_1.pth"])}
    assert not writes[0] & writes[1]
    assert any("recording.zarr" in p for p in writes[0])
    # printed once, saying how the batch is shared
    assert (runs / "two.out").read_text().splitlines()[0] == (
        f"batch size: {BATCH} (from --batch-size); the global batch: 2 in each of 2 processes"
    )
    assert (runs / "two.out").read_text().count("Training complete") == 1

    with (
        wordybird.open(one / "recording.zarr") as a,
        wordybird.open(two / "recording.zarr") as b,
    ):
        assert b.metadata["hyperparameters"]["processes"] == 2
        assert a.fields == b.fields and a.steps.tolist() == b.steps.tolist() == [0, 1, 2, 3, 4]
        for field in a.fields:
            # the initial state, and the first step's forward (logits, loss), come before
            # any gradient was reduced
            exact_steps = 2 if field == "logits" else len(a) if field in EXACT else 1
            for step in range(len(a)):
                x, y = a[field][step], b[field][step]
                if step < exact_steps:
                    assert same_bits(x, y), (field, step)
                else:
                    assert bf16_ulps(x, y) <= ULPS, (field, step, bf16_ulps(x, y))


def test_resume_and_continue_as_two_processes(runs: Path, tmp_path: Path) -> None:
    """The real command: `train --resume` under accelerate launch and `continue` under
    torchrun go on from checkpoint-2 of the two-process run exactly as that run went on."""
    two = tmp_path / "two"
    shutil.copytree(runs / "two", two)
    shutil.rmtree(two / "checkpoint-4")  # killed after the checkpoint at step 2
    accelerate = shutil.which("accelerate") or pytest.fail("accelerate is not on PATH")
    done = launch(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no",
         WORDYBIRD, "train", "--resume", "--out", str(two)],
        1,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("Training complete: steps 3-4"), done.stdout
    done = launch(
        [WORDYBIRD, "continue", str(two / "checkpoint-2"), "--steps", "2",
         "--schedule", "continue", "--out", str(tmp_path / "wb3")],
        2,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "batch size: 4 (from the checkpoint's run); the global batch: 2 in each of 2 " in (
        done.stdout
    )
    assert sorted(p.name for p in (tmp_path / "wb3").iterdir() if p.name.startswith(".")) == []
    with (
        wordybird.open(runs / "two" / "recording.zarr") as want,
        wordybird.open(two / "recording.zarr") as resumed,
        wordybird.open(tmp_path / "wb3" / "recording.zarr") as continued,
    ):
        assert resumed.steps.tolist() == [0, 1, 2, 3, 4] and continued.steps.tolist() == [2, 3, 4]
        for field in want.fields:
            for step in range(5):
                assert same_bits(resumed[field][step], want[field][step]), (field, step)
            for step in (3, 4):  # (its step 2 is its initial state: no gradient, no loss)
                assert same_bits(continued[field][step - 2], want[field][step]), (field, step)

    # one process cannot go on with two processes' random states: refused, nothing written
    shutil.rmtree(two / "checkpoint-4")
    before = sorted(p for p in two.rglob("*"))
    done = launch([WORDYBIRD, "train", "--resume", "--out", str(two)], 1)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {two / 'checkpoint-2'} was written by 2 processes and this run has 1 process: "
        "each process goes on from its own saved random state (dropout masks, ...), so run it "
        "as 2 processes"
    ]
    assert sorted(p for p in two.rglob("*")) == before


def test_a_global_batch_that_the_processes_cannot_share_is_refused_once(tmp_path: Path) -> None:
    done = launch([WORDYBIRD, *RUN, "--batch-size", "3", "--out", str(tmp_path / "run")], 2)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        "error: --batch-size 3 is the global batch and does not split evenly across 2 "
        "processes: give a multiple of 2"
    ]
    assert not (tmp_path / "run").exists()
