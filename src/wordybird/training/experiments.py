"""The Wordybird experiments: train from scratch, continue from a checkpoint, resume a run.

Each builds a :class:`RunPlan`, prepares the run folder and calls the one
:func:`~wordybird.training.run.run`. All three share one invariant: the Trainer's
``global_step`` *is* the experiment's step number, and the learning rate scheduler's epoch
counter equals it too. That is what lets the Trainer's own resume machinery (weights, Adam
state, scheduler, RNG, skipping the batches already seen) serve all three:

- ``train``: a fresh model, steps 1..N.
- ``resume``: the Trainer resumes the run's last checkpoint; the recording is cut back to it.
- ``continue``: the Trainer resumes a *staged* copy of the checkpoint whose ``optimizer.pt``
  and ``scheduler.pt`` say exactly what was asked for (the checkpoint's Adam state or a fresh
  one; a restarted, continued or constant schedule; see :mod:`.continuing`). Data continues
  where the checkpoint left off, as an uninterrupted run's would (the notebook's fresh
  Trainer replayed the first batches). From weights only, a fresh Trainer starts at step 0.

All three run with the Hugging Face libraries offline (:mod:`.offline`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from wordybird.errors import WordybirdError
from wordybird.training.checkpoints import (
    is_weights_only,
    last_complete_checkpoint,
    list_checkpoints,
    load_checkpoint_model,
    step_of,
)
from wordybird.training.config import (
    CHECKPOINT_PREFIX,
    MASKS,
    RECORDING,
    RUN_FILE,
    SUMMARY,
    RunPlan,
    RunResult,
    Schedule,
    TrainConfig,
    read_run_file,
)
from wordybird.training.continuing import plan_continue
from wordybird.training.model import build_model
from wordybird.training.offline import offline
from wordybird.training.run import RunData, run
from wordybird.training.schedules import LinearDecay
from wordybird.training.summary import format_summary

__all__ = ["TrainConfig", "continue_training", "format_summary", "resume", "train"]


@offline()
def train(
    config: TrainConfig, out: str | os.PathLike[str], *, overwrite: bool = False
) -> RunResult:
    """WB1/WB2: train a fresh model for ``config.steps`` steps, recording into ``out``."""
    config.validate()
    config = config.with_absolute_corpus()
    out = Path(out)
    data = RunData.load(config)
    _prepare_out(out, overwrite=overwrite)
    plan = RunPlan(
        config,
        start_step=0,
        base_lr=config.learning_rate,
        schedule=vars(LinearDecay(0, config.steps)),
    )
    return run(plan, out, build_model(config.model, config.seed), data)


@offline()
def resume(out: str | os.PathLike[str]) -> RunResult:
    """Continue an interrupted run in ``out`` from its last checkpoint, recording seamlessly."""
    out = Path(out)
    plan = read_run_file(out)
    if plan is None:
        raise WordybirdError(f"cannot resume {out}: it holds no run ({RUN_FILE} is missing)")
    checkpoint = last_complete_checkpoint(out)
    if checkpoint is None:
        raise WordybirdError(
            f"cannot resume {out}: it holds no complete {CHECKPOINT_PREFIX}N folder"
        )
    if step_of(checkpoint) >= plan.end_step:
        raise WordybirdError(f"{out} is already complete: {checkpoint} is its last step")
    model = load_checkpoint_model(checkpoint)
    return run(plan, out, model, RunData.load(plan.config), resume_from=checkpoint)


@offline()
def continue_training(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TrainConfig,
    *,
    schedule: Schedule = "restart",
    fresh_optimizer: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """WB3: continue from a checkpoint for ``config.steps`` more steps.

    Weights, Adam state (unless ``fresh_optimizer``), RNG and the data position come from
    the checkpoint; step numbers go on from its step. ``config`` is used as it is: pass it
    through :func:`~wordybird.training.continuing.inherit_settings` first to take the
    corpus, batch size, seed and recording mode from the checkpoint's run, as
    ``wordybird continue`` does. ``schedule``: see
    :func:`~wordybird.training.continuing.plan_continue`.
    """
    config.validate()
    checkpoint = Path(checkpoint)
    out = Path(out)
    plan, model = plan_continue(
        checkpoint, config, schedule=schedule, fresh_optimizer=fresh_optimizer
    )
    data = RunData.load(plan.config)
    _prepare_out(out, overwrite=overwrite, keep=checkpoint)
    stage_from = None if is_weights_only(checkpoint) else checkpoint
    return run(plan, out, model, data, stage_from=stage_from)


def _prepare_out(out: Path, *, overwrite: bool, keep: Path | None = None) -> None:
    """Refuse to clobber a run unless asked; with ``overwrite``, clear the old run, unless
    it holds ``keep`` (the checkpoint a ``continue`` starts from)."""
    if out.exists() and not out.is_dir():
        raise WordybirdError(f"output {out} exists and is not a folder")
    holds_run = (
        (out / RECORDING).exists() or bool(list_checkpoints(out)) or (out / RUN_FILE).exists()
    )
    if holds_run and not overwrite:
        raise WordybirdError(
            f"{out} already holds a run; pass --overwrite to replace it or --resume to continue it"
        )
    if holds_run and keep is not None and out.resolve() in keep.resolve().parents:
        raise WordybirdError(
            f"--overwrite would delete the run in {out} before continuing from its "
            f"{keep}: pick another --out"
        )
    if holds_run:
        # run.json first: a process killed while clearing must not leave a run that --resume
        # continues from an old checkpoint into a half-deleted recording
        for name in (RUN_FILE, SUMMARY, MASKS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / RECORDING, ignore_errors=True)
        for path in list_checkpoints(out).values():
            shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
