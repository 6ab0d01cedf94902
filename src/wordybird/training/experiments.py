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

All three run with the Hugging Face libraries offline (:mod:`.offline`), in one process or
as several under torchrun or accelerate launch (:mod:`.processes`): then the main process
prepares the run folder while the others wait, and only it returns the run's result (the
others return None).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from wordybird.errors import WordybirdError
from wordybird.storage import RUN_RECORDING, Location, is_url
from wordybird.training.checkpoints import (
    check_process_count,
    is_weights_only,
    last_complete_checkpoint,
    list_checkpoints,
    load_checkpoint_model,
    local_checkpoint,
    step_of,
)
from wordybird.training.config import (
    CHECKPOINT_PREFIX,
    MASKS,
    RUN_FILE,
    SUMMARY,
    RunFolder,
    RunPlan,
    RunResult,
    Schedule,
    TrainConfig,
    read_run_file,
)
from wordybird.training.continuing import plan_continue
from wordybird.training.model import build_model
from wordybird.training.offline import offline
from wordybird.training.processes import launched_processes, per_process_batch
from wordybird.training.run import RunData, run
from wordybird.training.schedules import LinearDecay
from wordybird.training.summary import format_summary

__all__ = ["TrainConfig", "continue_training", "format_summary", "resume", "train"]


@offline()
def train(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    local_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> RunResult | None:
    """WB1/WB2: train a fresh model for ``config.steps`` steps, recording into ``out``.

    ``out`` is the run folder, or an ``s3://bucket/prefix`` URL: then the recording streams
    to ``<out>/recording.zarr``, the checkpoints go to ``local_dir`` (default:
    :func:`~wordybird.training.config.default_local_dir`) with the run's files, and copies of
    those (run.json, the token masks, the summary) go beside the recording.
    ``storage_options`` (obstore's S3 settings) reach the bucket; they are written nowhere.
    """
    with launched_processes() as processes:
        with processes.main_first():
            config.validate()
            per_process_batch(config.batch_size, processes.count)
            config = config.with_absolute_corpus()
            folder = RunFolder.of(out, local_dir, storage_options)
            data = RunData.load(config)
            if processes.is_main:
                _prepare_out(folder, overwrite=overwrite)
        plan = RunPlan(
            config,
            start_step=0,
            base_lr=config.learning_rate,
            schedule=vars(LinearDecay(0, config.steps)),
            remote=_url(folder),
        )
        model = build_model(config.model, config.seed)
        return run(plan, folder, model, data, processes)


@offline()
def resume(
    out: str | os.PathLike[str],
    *,
    local_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> RunResult | None:
    """Continue an interrupted run from its last checkpoint, recording seamlessly.

    ``out`` is the run folder, or the ``s3://`` URL the run was started with (its run folder
    being ``local_dir``, by default the one ``train`` picks); a run folder whose run records
    to a URL resumes there too. ``storage_options``: as for :func:`train`.
    """
    with launched_processes() as processes:
        with processes.main_first():
            folder, plan, checkpoint = _resumable(out, local_dir, storage_options)
            per_process_batch(plan.config.batch_size, processes.count)
            check_process_count(checkpoint, processes.count)
            model = load_checkpoint_model(checkpoint)
            data = RunData.load(plan.config)
        return run(plan, folder, model, data, processes, resume_from=checkpoint)


def _resumable(
    out: str | os.PathLike[str],
    local_dir: str | os.PathLike[str] | None,
    storage_options: Mapping[str, str] | None,
) -> tuple[RunFolder, RunPlan, Path]:
    """The run to resume in ``out``: its folder, its plan and its last complete checkpoint;
    refused unless there is one to go on from."""
    folder = RunFolder.of(out, local_dir, storage_options if is_url(out) else None)
    plan = read_run_file(folder.local)
    if plan is None:
        where = f"its run folder {folder.local}" if folder.remote else "it"
        raise WordybirdError(
            f"cannot resume {out}: {where} holds no run ({RUN_FILE} is missing)"
            + ("; give the folder holding its checkpoints as --local-dir" if folder.remote else "")
        )
    if folder.remote is None and plan.remote is not None:  # the run folder of an s3:// run
        folder = RunFolder(folder.local, Location.of(plan.remote, storage_options))
    elif storage_options and folder.remote is None:
        Location.of(out, storage_options)  # refused: storage options for a local recording
    if _url(folder) != plan.remote:
        records_to = plan.remote or f"its own folder ({folder.local / RUN_RECORDING})"
        raise WordybirdError(
            f"cannot resume {out}: the run in {folder.local} records to {records_to}"
        )
    checkpoint = last_complete_checkpoint(folder.local)
    if checkpoint is None:
        raise WordybirdError(
            f"cannot resume {out}: {folder.local} holds no complete {CHECKPOINT_PREFIX}N folder"
        )
    if step_of(checkpoint) >= plan.end_step:
        raise WordybirdError(f"{out} is already complete: {checkpoint} is its last step")
    return folder, plan, checkpoint


@offline()
def continue_training(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TrainConfig,
    *,
    schedule: Schedule = "restart",
    fresh_optimizer: bool = False,
    overwrite: bool = False,
    local_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> RunResult | None:
    """WB3: continue from a checkpoint for ``config.steps`` more steps.

    Weights, Adam state (unless ``fresh_optimizer``), RNG and the data position come from
    the checkpoint; step numbers go on from its step. ``config`` is used as it is: pass it
    through :func:`~wordybird.training.continuing.inherit_settings` first to take the
    corpus, batch size, seed and recording mode from the checkpoint's run, as
    ``wordybird continue`` does. ``schedule``: see
    :func:`~wordybird.training.continuing.plan_continue`. ``out``, ``local_dir`` and
    ``storage_options``: as for :func:`train` (the checkpoint is a local folder).
    """
    with launched_processes() as processes:
        with processes.main_first():
            config.validate()
            per_process_batch(config.batch_size, processes.count)
            checkpoint = local_checkpoint(checkpoint)
            folder = RunFolder.of(out, local_dir, storage_options)
            plan, model = plan_continue(
                checkpoint, config, schedule=schedule, fresh_optimizer=fresh_optimizer
            )
            plan = replace(plan, remote=_url(folder))
            stage_from = None if is_weights_only(checkpoint) else checkpoint
            if stage_from is not None:
                check_process_count(stage_from, processes.count)
            data = RunData.load(plan.config)
            if processes.is_main:
                _prepare_out(folder, overwrite=overwrite, keep=checkpoint)
        return run(plan, folder, model, data, processes, stage_from=stage_from)


def _url(folder: RunFolder) -> str | None:
    return folder.remote.text if folder.remote is not None else None


def _prepare_out(folder: RunFolder, *, overwrite: bool, keep: Path | None = None) -> None:
    """Refuse to clobber a run unless asked; with ``overwrite``, clear the old run, unless
    it holds ``keep`` (the checkpoint a ``continue`` starts from). An ``s3://`` run is
    looked for in the bucket too (its recording, its run.json): every check is made, and the
    bucket reached, before anything is deleted."""
    out = folder.local
    if out.exists() and not out.is_dir():
        raise WordybirdError(f"output {out} exists and is not a folder")
    holds_run = (
        (out / RUN_RECORDING).exists() or bool(list_checkpoints(out)) or (out / RUN_FILE).exists()
    )
    remote_holds_run = folder.remote is not None and _holds_remote_run(folder.remote)
    if (holds_run or remote_holds_run) and not overwrite:
        raise WordybirdError(
            f"{out if holds_run else folder.remote} already holds a run; pass --overwrite to "
            "replace it or --resume to continue it"
        )
    if holds_run and keep is not None and out.resolve() in keep.resolve().parents:
        raise WordybirdError(
            f"--overwrite would delete the run in {out} before continuing from its "
            f"{keep}: pick another --out"
        )
    if remote_holds_run:
        _clear_remote_run(folder.remote)
    if holds_run:
        # run.json first: a process killed while clearing must not leave a run that --resume
        # continues from an old checkpoint into a half-deleted recording
        for name in (RUN_FILE, SUMMARY, MASKS):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / RUN_RECORDING, ignore_errors=True)
        for path in list_checkpoints(out).values():
            shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)


def _holds_remote_run(remote: Location) -> bool:
    from wordybird.storage import holds_keys, object_exists

    return object_exists(remote.child(RUN_FILE)) or holds_keys(remote.child(RUN_RECORDING))


def _clear_remote_run(remote: Location) -> None:
    """Remove an old run's objects at ``remote``: run.json first (as in a run folder), its
    recording only if it is one (a mistyped URL must not delete other data)."""
    from wordybird.recorder.format import is_recording
    from wordybird.storage import delete_object, delete_prefix, holds_keys

    recording = remote.child(RUN_RECORDING)
    if holds_keys(recording) and not is_recording(recording):
        raise WordybirdError(
            f"refusing to overwrite {recording}: it is not a wordybird recording (delete it "
            "yourself if it should go)"
        )
    for name in (RUN_FILE, SUMMARY, MASKS):
        delete_object(remote.child(name))
    delete_prefix(recording)
