"""The run itself: one straight-line :func:`run` behind ``train``, ``resume`` and ``continue``.

Each of those builds a :class:`~wordybird.training.config.RunPlan`, prepares the run folder
and hands over; :func:`run` then writes the run's files, builds the Trainer, opens the
recording, trains and summarizes, in that order, whichever of the three it serves. For an
``s3://`` --out, the run's files are copied beside the recording as soon as they are
written (the summary at the end), so that the bucket explains its recording even while the
run goes on, or after it was interrupted.
"""

from __future__ import annotations

import platform
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel, TrainingArguments

from wordybird._version import __version__
from wordybird.errors import StoppedWithMain, WordybirdError
from wordybird.recorder import StreamingRecorder
from wordybird.storage import Location
from wordybird.training.callback import RecorderCallback
from wordybird.training.checkpoints import staged_checkpoint, step_of
from wordybird.training.config import (
    CHECKPOINT_PREFIX,
    MASKS,
    RUN_FILE,
    SUMMARY,
    RunFolder,
    RunPlan,
    RunResult,
    TrainConfig,
    write_run_file,
)
from wordybird.training.control import RunControl, show_progress
from wordybird.training.data import (
    Corpus,
    TokenDataset,
    load_corpus,
    save_token_masks,
    token_masks,
    tokenize,
)
from wordybird.training.model import compute_in, resolve_compute_dtype
from wordybird.training.processes import Processes, per_process_batch
from wordybird.training.schedules import WordybirdTrainer
from wordybird.training.summary import summarize


@dataclass(frozen=True)
class RunData:
    """A run's corpus and what training takes from it.

    Loaded before the run folder is touched, so that a bad corpus (too short for one
    window, tokens outside the model's vocabulary) costs nothing: not even the run that
    ``--overwrite`` was about to replace.
    """

    corpus: Corpus
    tokens: torch.Tensor
    dataset: TokenDataset
    masks: dict[str, torch.Tensor]

    @classmethod
    def load(cls, config: TrainConfig) -> RunData:
        corpus = load_corpus(config.corpus)
        tokens = tokenize(corpus)
        dataset = TokenDataset(tokens, config.model.n_positions)
        return cls(corpus, tokens, dataset, token_masks(tokens, config.model.vocab_size))


def run(
    plan: RunPlan,
    folder: RunFolder,
    model: GPT2LMHeadModel,
    data: RunData,
    processes: Processes,
    *,
    resume_from: Path | None = None,
    stage_from: Path | None = None,
) -> RunResult | None:
    """Train ``model`` from ``plan.start_step`` to ``plan.end_step`` into ``folder``.

    Where the Trainer's state comes from: ``resume_from``, a checkpoint of this run
    (``--resume``: the recording is cut back to it and goes on); ``stage_from``, another
    run's checkpoint (``continue``: the Trainer resumes a staged copy whose optimizer and
    scheduler state are the plan's); neither, a fresh Trainer (``train``, or ``continue``
    from weights only). In a multi-process run, only the main process writes the run's
    files and the recording, and only it returns a result (the others return None).
    """
    c = plan.config
    out = folder.local
    if processes.is_main:
        save_token_masks(data.masks, out / MASKS)
        write_run_file(out, plan)
        folder.upload(MASKS, RUN_FILE)

    device = _device()
    compute = resolve_compute_dtype(c.compute_dtype, device)
    compute_in(model, compute)
    control = RunControl(processes.any_process)
    trainer = WordybirdTrainer(
        model=model,
        args=_training_args(plan, out, compute, processes.count, device),
        train_dataset=data.dataset,
        lr_factor=plan.lr_factor(),
        callbacks=[control],
    )
    show_progress(trainer)

    start = (
        staged_checkpoint(stage_from, out, trainer, plan, processes)
        if stage_from
        else nullcontext()
    )
    with start as staged:
        recorder: RecorderCallback | None = None
        if c.record_every is not None:
            metadata = _metadata(plan, data, processes.count)
            with processes.main_first():
                recorder = _recorder_callback(
                    plan, folder.recording, metadata, resume_from, processes
                )
            trainer.add_callback(recorder)
        resume_at = staged or resume_from
        try:
            with control.catching_interrupts():
                trainer.train(resume_from_checkpoint=str(resume_at) if resume_at else None)
        except BaseException:
            if recorder is not None:
                with suppress(WordybirdError):
                    recorder.close()
            raise
    if recorder is not None:
        recorder.close()  # normally done at train end already; idempotent

    last = trainer.state.global_step
    checkpoint = out / f"{CHECKPOINT_PREFIX}{last}"
    if not processes.is_main:
        if control.interrupted:
            raise StoppedWithMain(f"interrupted after step {last}")
        return None
    if control.interrupted:
        committed = ""
        if recorder is not None:
            committed = f"steps up to {last} are committed in {folder.recording}; "
        raise WordybirdError(
            f"interrupted after step {last}: {committed}checkpoint written to {checkpoint}; "
            f"continue with {_resume_command(folder, processes.count)}"
        )
    summary = summarize(out, trainer, control, plan, folder.recording if recorder else None)
    folder.upload(SUMMARY)
    first = control.first_step or 0
    return RunResult(out, first, last, control.seconds_per_step, checkpoint, summary)


def _resume_command(folder: RunFolder, processes: int) -> str:
    """The command that resumes the run in ``folder``, as many processes as it ran."""
    launch = "wordybird"
    if processes > 1:
        launch = f"torchrun --nproc_per_node={processes} $(which wordybird)"
    if folder.remote is None:
        return f"`{launch} train --resume --out {folder.local}`"
    command = f"`{launch} train --resume --out {folder.remote} --local-dir {folder.local}`"
    if folder.remote.options:  # not repeated here: they may hold credentials
        command += " with the same --storage-option settings"
    return command


def _recorder_callback(
    plan: RunPlan,
    path: Location,
    metadata: dict[str, Any],
    resume_from: Path | None,
    processes: Processes,
) -> RecorderCallback:
    """A new recording, or, resuming, the run's recording cut back to the checkpoint; in a
    multi-process run, only in the main process (the others' callbacks record nothing)."""
    c = plan.config
    record_initial = resume_from is None
    if not processes.is_main:
        return RecorderCallback(None, record_every=c.record_every, record_initial=record_initial)
    if resume_from is None:
        recorder = StreamingRecorder(path, metadata=metadata, mode=c.mode, durable=c.durable)
    else:
        recorder = StreamingRecorder(path, resume=True, metadata=metadata, durable=c.durable)
        try:
            _cut_recording(recorder, resume_from, plan)
        except BaseException:
            with suppress(WordybirdError):
                recorder.close()
            raise
    return RecorderCallback(recorder, record_every=c.record_every, record_initial=record_initial)


def _cut_recording(recorder: StreamingRecorder, checkpoint: Path, plan: RunPlan) -> None:
    """Cut the recording back to the checkpoint's step; refuse if steps are missing."""
    step = step_of(checkpoint)
    recorder.truncate(step)
    every = plan.config.record_every or 1
    expected = max(plan.start_step, step - step % every)
    if recorder.last_step != expected:
        raise WordybirdError(
            f"cannot resume: {recorder.path} ends at step {recorder.last_step} but "
            f"{checkpoint} needs every recorded step up to {expected}"
        )


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _training_args(
    plan: RunPlan, out: Path, compute: torch.dtype, processes: int, device: torch.device
) -> TrainingArguments:
    """The Trainer's settings. ``--batch-size`` is the global batch: each of ``processes``
    takes its share of every batch of one permutation (Accelerate's seedable sampler, seeded
    alike in every process, is what one process also uses), so every step trains on the same
    samples, in the same order, as one process would with the whole batch. Several
    processes on CPUs need ``use_cpu``: without it the Trainer does not train them as one
    (distributed) run but as independent copies."""
    c = plan.config
    return TrainingArguments(
        output_dir=str(out),
        max_steps=plan.end_step,
        per_device_train_batch_size=per_process_batch(c.batch_size, processes),
        learning_rate=plan.base_lr,
        weight_decay=c.weight_decay,
        adam_beta1=c.adam_beta1,
        adam_beta2=c.adam_beta2,
        adam_epsilon=c.adam_epsilon,
        max_grad_norm=c.max_grad_norm,
        optim="adamw_torch",
        logging_steps=1,  # every step's loss: the summary's first and last come from the log
        save_strategy="steps",
        save_steps=c.checkpoint_every or plan.end_step,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        bf16=compute == torch.bfloat16,
        seed=c.seed,
        report_to="none",
        disable_tqdm=False,
        use_cpu=processes > 1 and device.type == "cpu",
        ddp_find_unused_parameters=False,  # GPT-2 uses every parameter in every step
    )


def _metadata(plan: RunPlan, data: RunData, processes: int) -> dict[str, Any]:
    """The recording's metadata: the notebook's scalars, the run's settings and plan (with
    the number of processes that trained it), the corpus and the library versions."""
    c = plan.config
    return {
        # the notebook's scalars, under its names
        "learning_rate": plan.base_lr,
        "weight_decay": c.weight_decay,
        "adam_beta1": c.adam_beta1,
        "adam_beta2": c.adam_beta2,
        "n_trained": int(data.masks["trained_mask"].sum()),
        "n_untrained": int(data.masks["untrained_mask"].sum()),
        "starting_step": plan.start_step,
        "hyperparameters": {
            **{k: v for k, v in c.to_dict().items() if k not in ("model", "corpus")},
            **c.model.to_dict(),
            "adam_epsilon": c.adam_epsilon,
            "optim": "adamw_torch",
            "lr_schedule": plan.schedule,
            "param_dtype": "bfloat16",
            "end_step": plan.end_step,
            "processes": processes,
        },
        "corpus": {
            "source": data.corpus.source,
            "sha256": data.corpus.sha256,
            "bytes": data.corpus.nbytes,
            "tokens": len(data.tokens),
        },
        "run": plan.to_dict(),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import numcodecs
    import transformers
    import zarr

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "wordybird": __version__,
    }
