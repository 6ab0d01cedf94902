"""Recording sharded parameters: FSDP2 under torchrun with gloo on CPU, two processes.

The same loop (tests/fsdp_loop.py: a tiny GPT-2, no dropout, samples in order) is recorded
by ``wordybird.watch`` once by one process with the whole global batch and once by two
processes under ``fully_shard``, each holding half of every parameter's rows (49 and 48 of
the embedding's 97) and taking half of each global batch. The main process gathers the
whole tensors, so the two recordings agree: exactly where nothing is reduced (step and
learning-rate counters, rows), and to float32 rounding elsewhere, the two runs summing in
different orders: at most 8.0e-6 of a field's largest magnitude, measured (a shard would
have half the rows; the main process's own half-batch gradient would be off by tens of
percent). The recording is resumed after step 1 and then taken every other step, so the
processes must agree on the step the main one resumes from (else their collectives
mismatch and the run hangs until the timeout). The same process group then tries what is
refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import wordybird
from wordybird import WordybirdError
from wordybird.training.callback import RecorderCallback

SCRIPT = Path(__file__).with_name("fsdp_loop.py")
SUPPORTED = (
    "wordybird records FSDP2 (fully_shard) parameters, sharded on dim 0 over all processes, "
    "with wordybird.watch"
)


def run_script(out: Path, mode: str) -> str:
    out.mkdir()
    command = [sys.executable, str(SCRIPT), str(out), mode]
    if mode != "one":
        torchrun = shutil.which("torchrun") or pytest.fail("torchrun is not on PATH")
        command = [torchrun, "--standalone", "--nproc_per_node=2", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_fsdp2_records_the_whole_tensors_one_process_records(tmp_path: Path) -> None:
    run_script(tmp_path / "one", "one")
    printed = run_script(tmp_path / "two", "fsdp2")
    # exactly one store, written by the main process only
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["rec.zarr", "refusals"]
    with (
        wordybird.open(tmp_path / "one" / "rec.zarr") as one,
        wordybird.open(tmp_path / "two" / "rec.zarr") as two,
    ):
        assert one.fields == two.fields
        assert one.steps.tolist() == two.steps.tolist() == [1, 2, 4]  # resumed after 1
        assert two["transformer.wte.weight/grad"][1].shape == (97, 16)  # both shards
        assert two["transformer.h.0.mlp.c_fc.weight/exp_avg"][1].shape == (4, 64)
        assert two["transformer.wpe.weight/rows"][1].tolist() == [1, 2, 7]
        assert float(one["grad_norms"][1]) > 0.5  # the loop clips at 0.5: recorded pre-clip
        for field in one.fields:
            a, b = one[field][:], two[field][:]
            if field.endswith(("/step", "/lr", "/rows")):
                assert torch.equal(a, b), field
            else:  # fp32 rounding, relative to the field's scale
                assert (a - b).abs().max() <= 1e-5 * a.abs().max(), field
    refused = sorted(line for line in printed.splitlines() if line.startswith(("refused", "acc")))
    expected = [
        "FSDP1 (FullyShardedDataParallel) holds flattened shards of parameters, which are "
        f"not supported: {SUPPORTED}",
        "transformer.wte.weight is a DTensor placed as (Shard(dim=1),) on a 1-D mesh, which "
        f"is not supported: {SUPPORTED}",
        "RecorderCallback does not record sharded (FSDP2/DTensor) parameters; "
        f"{SUPPORTED} in a loop of your own",
    ]
    wrong_recorders = [
        "watch() was given no recorder on the main process: nothing records",
        "process 1 of 2 was given a recorder: create it on the main process only and pass "
        "None elsewhere (one store, one writer)",
    ]
    local_state = [  # each process its own rows: 49 and 48
        f"RowNormSGD's 'row_norms' for the sharded transformer.wte.weight is not a DTensor of "
        f"its shape (shape ({rows},)); {SUPPORTED}, with optimizer state of the parameter's "
        "shape or scalars"
        for rows in (49, 48)
    ]
    own_meshes = [
        f"transformer.wte.weight is sharded over 1 of the 2 processes, its first rows on "
        f"process {first}, which is not supported: {SUPPORTED}"
        for first in (0, 1)
    ]
    everything = [*expected, *expected, *wrong_recorders, *local_state, *own_meshes]
    assert refused == sorted(f"refused: {message}" for message in everything)


class ZeroStage2:
    """Stands in for DeepSpeed's ZeRO optimizer (not installed here): a class of its
    package, which partitions the optimizer's state and gradients across processes."""

    __module__ = "deepspeed.runtime.zero.stage_1_and_2"

    def __init__(self, params) -> None:
        self.param_groups = [{"params": list(params)}]
        self.state: dict = {}


def zero3_model() -> nn.Module:
    """A model whose parameter carries DeepSpeed ZeRO-3's partitioning attribute."""
    model = nn.Linear(4, 4)
    model.weight.ds_id = 0
    return model


@pytest.mark.parametrize(
    ("model", "optimizer"),
    [
        (zero3_model, lambda m: torch.optim.AdamW(m.parameters())),
        (lambda: nn.Linear(4, 4), lambda m: ZeroStage2(m.parameters())),
    ],
    ids=["zero3-parameters", "zero-optimizer"],
)
def test_deepspeed_zero_is_refused(tmp_path: Path, model, optimizer) -> None:
    model = model()
    optimizer = optimizer(model)
    message = (
        "DeepSpeed ZeRO partitions parameters, gradients or optimizer state across processes "
        f"and is not supported: {SUPPORTED}"
    )
    with wordybird.StreamingRecorder(tmp_path / "rec.zarr") as recorder:
        with pytest.raises(WordybirdError) as refused:
            wordybird.watch(model, optimizer, recorder, parameters=["weight"])
        assert str(refused.value) == message
        callback = RecorderCallback(recorder, parameters=["weight"])
        state = SimpleNamespace(is_world_process_zero=True, global_step=0)
        with pytest.raises(WordybirdError) as refused:
            callback.on_train_begin(None, state, None, model=model, optimizer=optimizer)
        assert str(refused.value) == message
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert len(rec) == 0  # nothing recorded
