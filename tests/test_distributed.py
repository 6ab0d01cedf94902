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

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wordybird

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
