"""The Wordybird experiments: train from scratch, continue from a checkpoint, resume a run.

All three drive the Hugging Face ``Trainer`` with a :class:`RecorderCallback` and share one
invariant: the Trainer's ``global_step`` *is* the experiment's step number, and the learning
rate scheduler's epoch counter equals it too. That is what lets the Trainer's own resume
machinery (weights, Adam state, scheduler, RNG, skipping the batches already seen) serve all
three:

- ``train``: a fresh model, steps 1..N.
- ``resume``: the Trainer resumes the run's last checkpoint; the recording is cut back to it.
- ``continue``: the Trainer resumes a *staged* copy of the checkpoint whose ``optimizer.pt``
  and ``scheduler.pt`` say exactly what was asked for (the checkpoint's Adam state or a fresh
  one; a restarted, continued or constant schedule). The notebook's ``from_pretrained``
  loaded weights only and silently trained with a fresh optimizer; ``--fresh-optimizer``
  reproduces that. Data continues where the checkpoint left off, as an uninterrupted run's
  would (the notebook's fresh Trainer replayed the first batches).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import warnings
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2LMHeadModel, ProgressCallback, TrainingArguments

from wordybird.errors import WordybirdError
from wordybird.training.checkpoints import (
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    is_complete,
    list_checkpoints,
    load_checkpoint_model,
    model_config_of,
    stage_checkpoint,
    torch_load,
    trainer_state,
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
)
from wordybird.training.control import RunControl
from wordybird.training.data import (
    Corpus,
    TokenDataset,
    load_corpus,
    save_token_masks,
    token_masks,
    tokenize,
)
from wordybird.training.model import build_model, compute_in, resolve_compute_dtype
from wordybird.training.schedules import (
    ConstantFactor,
    LinearDecay,
    LRFactor,
    WordybirdTrainer,
    schedule_from_state,
)
from wordybird.training.summary import format_summary, summarize

__all__ = ["TrainConfig", "continue_training", "format_summary", "resume", "train"]


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _versions() -> dict[str, str]:
    import numcodecs
    import transformers
    import zarr

    import wordybird

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "wordybird": wordybird.__version__,
    }


def _metadata(
    plan: RunPlan, corpus: Corpus, n_tokens: int, masks: dict[str, torch.Tensor]
) -> dict[str, Any]:
    c = plan.config
    return {
        # the notebook's scalars, under its names
        "learning_rate": plan.base_lr,
        "weight_decay": c.weight_decay,
        "adam_beta1": c.adam_beta1,
        "adam_beta2": c.adam_beta2,
        "n_trained": int(masks["trained_mask"].sum()),
        "n_untrained": int(masks["untrained_mask"].sum()),
        "starting_step": plan.start_step,
        "hyperparameters": {
            **{k: v for k, v in c.to_dict().items() if k not in ("model", "corpus")},
            **c.model.to_dict(),
            "adam_epsilon": c.adam_epsilon,
            "optim": "adamw_torch",
            "lr_schedule": plan.schedule,
            "param_dtype": "bfloat16",
            "end_step": plan.end_step,
        },
        "corpus": {
            "source": corpus.source,
            "sha256": corpus.sha256,
            "bytes": corpus.nbytes,
            "tokens": n_tokens,
        },
        "run": plan.to_dict(),
        "versions": _versions(),
    }


def _training_args(plan: RunPlan, out: Path, compute: torch.dtype) -> TrainingArguments:
    c = plan.config
    return TrainingArguments(
        output_dir=str(out),
        max_steps=plan.end_step,
        per_device_train_batch_size=c.batch_size,
        learning_rate=plan.base_lr,
        weight_decay=c.weight_decay,
        adam_beta1=c.adam_beta1,
        adam_beta2=c.adam_beta2,
        adam_epsilon=c.adam_epsilon,
        max_grad_norm=c.max_grad_norm,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="steps",
        save_steps=c.checkpoint_every or plan.end_step,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        bf16=compute == torch.bfloat16,
        seed=c.seed,
        report_to="none",
        disable_tqdm=False,
    )


def _prepare_out(out: Path, *, overwrite: bool) -> None:
    """Refuse to clobber a recording unless asked; with ``overwrite``, clear the old run."""
    if out.exists() and not out.is_dir():
        raise WordybirdError(f"output {out} exists and is not a folder")
    holds_run = (
        (out / RECORDING).exists() or bool(list_checkpoints(out)) or (out / RUN_FILE).exists()
    )
    if holds_run and not overwrite:
        raise WordybirdError(
            f"{out} already holds a run; pass --overwrite to replace it or --resume to continue it"
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


def _execute(
    plan: RunPlan,
    out: Path,
    model: GPT2LMHeadModel,
    data: RunData,
    *,
    resume_from: Path | None,
    resume_recording: bool,
    staging: Any = None,
) -> RunResult:
    """Run the Trainer from ``plan.start_step`` (or ``resume_from``) to ``plan.end_step``."""
    from wordybird.recorder import StreamingRecorder
    from wordybird.training.callback import RecorderCallback

    c = plan.config
    save_token_masks(data.masks, out / MASKS)
    metadata = _metadata(plan, data.corpus, len(data.tokens), data.masks)
    (out / RUN_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")

    device = _device()
    compute = resolve_compute_dtype(c.compute_dtype, device)
    compute_in(model, compute)
    control = RunControl()
    trainer = WordybirdTrainer(
        model=model,
        args=_training_args(plan, out, compute),
        train_dataset=data.dataset,
        lr_factor=plan.lr_factor(),
        callbacks=[control],
    )
    trainer.remove_callback(ProgressCallback)
    if staging is not None:
        resume_from = staging(trainer)

    recorder_cb = None
    if c.record_every is not None:
        path = out / RECORDING
        if resume_recording:
            recorder = StreamingRecorder(path, resume=True, metadata=metadata, durable=c.durable)
            try:
                _cut_recording(recorder, resume_from, plan)
            except BaseException:
                with suppress(WordybirdError):
                    recorder.close()
                raise
        else:
            recorder = StreamingRecorder(path, metadata=metadata, mode=c.mode, durable=c.durable)
        recorder_cb = RecorderCallback(
            recorder, record_every=c.record_every, record_initial=not resume_recording
        )
        trainer.add_callback(recorder_cb)

    try:
        with control.catching_interrupts():
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException:
        if recorder_cb is not None:
            with suppress(WordybirdError):
                recorder_cb.close()
        raise
    if recorder_cb is not None:
        recorder_cb.close()  # normally done at train end already; idempotent

    last = trainer.state.global_step
    checkpoint = out / f"{CHECKPOINT_PREFIX}{last}"
    if control.interrupted:
        committed = (
            f"steps up to {last} are committed in {out / RECORDING}; " if recorder_cb else ""
        )
        raise WordybirdError(
            f"interrupted after step {last}: {committed}checkpoint written to {checkpoint}; "
            f"continue with `wordybird train --resume {out}`"
        )
    summary = summarize(out, trainer, control, plan)
    return RunResult(
        out, control.first_step or 0, last, control.seconds_per_step, checkpoint, summary
    )


def _cut_recording(recorder: Any, checkpoint: Path | None, plan: RunPlan) -> None:
    """Cut the recording back to the checkpoint's step; refuse if steps are missing."""
    step = int(checkpoint.name[len(CHECKPOINT_PREFIX) :]) if checkpoint else plan.start_step
    recorder.truncate(step)
    every = plan.config.record_every or 1
    expected = max(plan.start_step, step - step % every)
    if recorder.last_step != expected:
        raise WordybirdError(
            f"cannot resume: {recorder.path} ends at step {recorder.last_step} but "
            f"{checkpoint} needs every recorded step up to {expected}"
        )


# -- the three entry points -------------------------------------------------------------------


def train(
    config: TrainConfig, out: str | os.PathLike[str], *, overwrite: bool = False
) -> RunResult:
    """WB1/WB2: train a fresh model for ``config.steps`` steps, recording into ``out``."""
    config.validate()
    out = Path(out)
    data = RunData.load(config)
    _prepare_out(out, overwrite=overwrite)
    plan = RunPlan(
        config,
        start_step=0,
        base_lr=config.learning_rate,
        schedule=vars(LinearDecay(0, config.steps)),
    )
    model = build_model(config.model, config.seed)
    return _execute(plan, out, model, data, resume_from=None, resume_recording=False)


def resume(out: str | os.PathLike[str]) -> RunResult:
    """Continue an interrupted run in ``out`` from its last checkpoint, recording seamlessly."""
    out = Path(out)
    run_file = out / RUN_FILE
    if not run_file.is_file():
        raise WordybirdError(f"cannot resume {out}: it holds no run ({RUN_FILE} is missing)")
    plan = RunPlan.from_dict(json.loads(run_file.read_text()))
    checkpoints = {step: path for step, path in list_checkpoints(out).items() if is_complete(path)}
    if not checkpoints:
        raise WordybirdError(
            f"cannot resume {out}: it holds no complete {CHECKPOINT_PREFIX}N folder"
        )
    step = max(checkpoints)
    if step >= plan.end_step:
        raise WordybirdError(f"{out} is already complete: {checkpoints[step]} is its last step")
    model = load_checkpoint_model(checkpoints[step])
    return _execute(
        plan,
        out,
        model,
        RunData.load(plan.config),
        resume_from=checkpoints[step],
        resume_recording=plan.config.record_every is not None,
    )


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
    the checkpoint; step numbers go on from its step. ``schedule``: ``restart`` = a new
    linear decay from the base LR over the new steps; ``continue`` = the saved scheduler as
    it is; ``constant`` = hold the LR the checkpoint's last step used.
    """
    config.validate()
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise WordybirdError(f"checkpoint {checkpoint} does not exist or is not a folder")
    state = trainer_state(checkpoint)
    start = int(state.get("global_step", 0))
    if not fresh_optimizer and not (checkpoint / OPTIMIZER_FILE).is_file():
        raise WordybirdError(
            f"{checkpoint} holds no optimizer state ({OPTIMIZER_FILE}); pass --fresh-optimizer "
            "to start Adam from zero as the notebook did"
        )
    saved = (
        torch_load(checkpoint / SCHEDULER_FILE) if (checkpoint / SCHEDULER_FILE).is_file() else None
    )
    saved_factor = schedule_from_state(
        (saved or {}).get("lr_lambdas", [None])[0], int(state.get("max_steps", start))
    )
    base_lr = float(saved["base_lrs"][0]) if saved else config.learning_rate
    if schedule == "restart":
        factor: LRFactor = LinearDecay(start, start + config.steps)
    elif schedule == "continue":
        if saved is None:
            raise WordybirdError(f"{checkpoint} holds no scheduler state ({SCHEDULER_FILE})")
        factor = saved_factor
        if factor(start) == 0.0:
            warnings.warn(
                f"the checkpoint's schedule has decayed to 0 by step {start}: with --schedule "
                "continue the learning rate stays 0 and only Adam's state moves the weights",
                stacklevel=2,
            )
    elif schedule == "constant":
        factor = ConstantFactor(saved_factor(max(start - 1, 0)) if saved else 1.0)
    else:
        raise WordybirdError(f"unknown schedule {schedule!r}; choose restart, continue or constant")

    out = Path(out)
    if overwrite and out.resolve() in checkpoint.resolve().parents:
        raise WordybirdError(
            f"--overwrite would delete the run in {out} before continuing from its "
            f"{checkpoint}: pick another --out"
        )
    model = load_checkpoint_model(checkpoint)
    config = replace(config, model=model_config_of(model))
    data = RunData.load(config)
    _prepare_out(out, overwrite=overwrite)
    plan = RunPlan(
        config,
        start_step=start,
        base_lr=base_lr,
        schedule=vars(factor),
        continued_from=str(checkpoint),
        schedule_mode=schedule,
        fresh_optimizer=fresh_optimizer,
    )
    staging_dir = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))

    def stage(trainer: WordybirdTrainer) -> Path:
        stage_checkpoint(checkpoint, staging_dir, trainer, plan, fresh=fresh_optimizer)
        return staging_dir

    try:
        return _execute(
            plan, out, model, data, resume_from=None, resume_recording=False, staging=stage
        )
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
