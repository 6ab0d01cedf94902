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
import math
import os
import platform
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from wordybird.errors import WordybirdError
from wordybird.training.data import (
    Corpus,
    TokenDataset,
    load_corpus,
    save_token_masks,
    token_masks,
    tokenize,
)
from wordybird.training.model import (
    ComputeDtype,
    ModelConfig,
    build_model,
    compute_in,
    resolve_compute_dtype,
)
from wordybird.training.tokenizer import set_offline

set_offline()

from transformers import (  # noqa: E402  (after set_offline: nothing may reach the network)
    GPT2LMHeadModel,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

Schedule = Literal["restart", "continue", "constant"]

RECORDING = "recording.zarr"
MASKS = "token_masks.safetensors"
SUMMARY = "summary.json"
RUN_FILE = "run.json"
CHECKPOINT_PREFIX = "checkpoint-"
_OPTIMIZER = "optimizer.pt"
_SCHEDULER = "scheduler.pt"
_TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; the defaults are the notebook's WB1."""

    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 42
    record_every: int | None = 1  # None: no recording
    checkpoint_every: int | None = None  # None: only the final checkpoint
    compute_dtype: ComputeDtype = "auto"
    mode: Literal["default", "compact"] = "default"
    durable: bool = False  # fsync each recorded step before committing it (FORMAT.md)
    corpus: str | None = None  # None: the stdlib documentation corpus
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise WordybirdError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("record_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise WordybirdError(f"{name} must be positive, got {value}")
        if not self.learning_rate > 0:
            raise WordybirdError(f"the learning rate must be positive, got {self.learning_rate}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**{**data, "model": ModelConfig(**data["model"])})


# -- learning-rate schedules ------------------------------------------------------------------
# Callable objects rather than closures: LambdaLR saves a callable object's __dict__ in its
# state_dict, so a checkpoint's scheduler.pt says which schedule it follows.


class LinearDecay:
    """LR factor falling linearly from 1 at step ``start`` to 0 at ``end`` (the Trainer's
    default schedule when ``start`` is 0), and 0 after."""

    def __init__(self, start: int, end: int) -> None:
        self.kind = "linear"
        self.start = start
        self.end = end

    def __call__(self, step: int) -> float:
        return max(0.0, (self.end - step) / max(1, self.end - self.start))


class ConstantFactor:
    """A constant LR factor."""

    def __init__(self, factor: float) -> None:
        self.kind = "constant"
        self.factor = factor

    def __call__(self, step: int) -> float:
        return self.factor


LRFactor = LinearDecay | ConstantFactor


def schedule_from_state(lambda_state: dict[str, Any] | None, trainer_max_steps: int) -> LRFactor:
    """The schedule a saved ``scheduler.pt`` follows.

    wordybird's schedules name themselves; a plain Trainer checkpoint's (an empty dict) is the
    Trainer's default linear decay over its run's ``max_steps``.
    """
    state = lambda_state or {}
    if state.get("kind") == "linear":
        return LinearDecay(int(state["start"]), int(state["end"]))
    if state.get("kind") == "constant":
        return ConstantFactor(float(state["factor"]))
    return LinearDecay(0, trainer_max_steps)


class WordybirdTrainer(Trainer):
    """A ``Trainer`` whose LR schedule is a :data:`LRFactor` of the global step."""

    def __init__(self, *args: Any, lr_factor: LRFactor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lr_factor = lr_factor

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LambdaLR:
        if self.lr_scheduler is None:
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.lr_factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler


# -- run control: progress bar, interrupts, timing --------------------------------------------


class _RunControl(TrainerCallback):
    """Progress bar with loss; Ctrl-C stops after the current step with a checkpoint."""

    def __init__(self) -> None:
        self.interrupted = False
        self.bar: Any = None
        self.started = math.nan
        self.ended = math.nan
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.last_loss = math.nan

    def on_train_begin(self, args, state, control, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.first_step = state.global_step
        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True
        )
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if logs and "loss" in logs and self.bar is not None:
            self.last_loss = float(logs["loss"])
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}")

    def on_step_end(self, args, state, control, **kwargs: Any) -> None:
        self.last_step = state.global_step
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        if self.interrupted:
            control.should_training_stop = True
            control.should_save = True

    def on_train_end(self, args, state, control, **kwargs: Any) -> None:
        self.ended = time.perf_counter()
        if self.bar is not None:
            self.bar.close()

    @contextmanager
    def catching_interrupts(self) -> Iterator[None]:
        """The first Ctrl-C asks for a clean stop; a second one interrupts at once."""

        def stop(signum: int, frame: Any) -> None:
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)
            if self.bar is not None:
                self.bar.write("interrupt: stopping after this step and writing a checkpoint")

        try:
            previous = signal.signal(signal.SIGINT, stop)
        except ValueError:  # not the main thread: no signal handling there
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @property
    def seconds_per_step(self) -> float:
        steps = (self.last_step or 0) - (self.first_step or 0)
        return (self.ended - self.started) / steps if steps > 0 else math.nan


# -- the run ------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """What one invocation does; saved as ``run.json`` so ``--resume`` can redo it."""

    config: TrainConfig
    start_step: int = 0
    base_lr: float = 1e-3
    schedule: dict[str, Any] = field(default_factory=dict)  # the LRFactor's __dict__
    continued_from: str | None = None
    schedule_mode: str | None = None  # continue's --schedule
    fresh_optimizer: bool | None = None

    @property
    def end_step(self) -> int:
        return self.start_step + self.config.steps

    def lr_factor(self) -> LRFactor:
        return schedule_from_state(self.schedule, self.end_step)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": self.config.to_dict(), "end_step": self.end_step}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunPlan:
        data = {k: v for k, v in data.items() if k != "end_step"}
        return cls(**{**data, "config": TrainConfig.from_dict(data["config"])})


@dataclass
class RunResult:
    """What a finished run produced."""

    out: Path
    first_step: int
    last_step: int
    seconds_per_step: float
    checkpoint: Path
    summary: dict[str, Any]


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


def _checkpoints(out: Path) -> dict[int, Path]:
    found = {}
    for path in out.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and suffix.isdigit():
            found[int(suffix)] = path
    return found


def _prepare_out(out: Path, *, overwrite: bool) -> None:
    """Refuse to clobber a recording unless asked; with ``overwrite``, clear the old run."""
    if out.exists() and not out.is_dir():
        raise WordybirdError(f"output {out} exists and is not a folder")
    holds_run = (out / RECORDING).exists() or bool(_checkpoints(out)) or (out / RUN_FILE).exists()
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
        for path in _checkpoints(out).values():
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


def _load_checkpoint_model(checkpoint: Path) -> GPT2LMHeadModel:
    """The checkpoint's GPT-2, refused unless every one of its weights comes from the folder.

    ``from_pretrained`` gives weights the folder lacks random values, with only a log line:
    another model's checkpoint (a Llama's) would silently "continue" as a fresh GPT-2. A
    folder without ``config.json`` would be looked up on the Hub as a model name instead.
    """
    if not (checkpoint / "config.json").is_file():
        raise WordybirdError(f"{checkpoint} holds no model (config.json is missing)")
    try:
        model, info = GPT2LMHeadModel.from_pretrained(
            str(checkpoint), dtype=torch.bfloat16, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        raise WordybirdError(f"cannot load the model in {checkpoint}: {exc}") from exc
    missing = sorted(info["missing_keys"])
    if missing:
        raise WordybirdError(
            f"{checkpoint} does not hold a GPT-2 model's weights ({len(missing)} missing, such "
            f"as {missing[0]}): is it a checkpoint of another model?"
        )
    return model


def _model_config_of(model: GPT2LMHeadModel) -> ModelConfig:
    cfg = model.config
    return ModelConfig(cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions)


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
    control = _RunControl()
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
    checkpoints = {step: path for step, path in _checkpoints(out).items() if _finished(path)}
    if not checkpoints:
        raise WordybirdError(
            f"cannot resume {out}: it holds no complete {CHECKPOINT_PREFIX}N folder"
        )
    step = max(checkpoints)
    if step >= plan.end_step:
        raise WordybirdError(f"{out} is already complete: {checkpoints[step]} is its last step")
    model = _load_checkpoint_model(checkpoints[step])
    return _execute(
        plan,
        out,
        model,
        RunData.load(plan.config),
        resume_from=checkpoints[step],
        resume_recording=plan.config.record_every is not None,
    )


def _finished(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint``: it writes trainer_state.json
    last, so a process killed while saving leaves a folder without it (or with a torn one),
    which resuming from would fail on, every time, as it stays the newest folder."""
    try:
        _trainer_state(checkpoint)
    except WordybirdError:
        return False
    return True


def _trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / _TRAINER_STATE
    if not path.is_file():
        raise WordybirdError(f"{checkpoint} is not a Trainer checkpoint ({_TRAINER_STATE} missing)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WordybirdError(f"cannot read {path}: {exc}") from exc


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise WordybirdError(f"cannot read {path}: {exc}") from exc


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
    state = _trainer_state(checkpoint)
    start = int(state.get("global_step", 0))
    if not fresh_optimizer and not (checkpoint / _OPTIMIZER).is_file():
        raise WordybirdError(
            f"{checkpoint} holds no optimizer state ({_OPTIMIZER}); pass --fresh-optimizer "
            "to start Adam from zero as the notebook did"
        )
    saved = _torch_load(checkpoint / _SCHEDULER) if (checkpoint / _SCHEDULER).is_file() else None
    saved_factor = schedule_from_state(
        (saved or {}).get("lr_lambdas", [None])[0], int(state.get("max_steps", start))
    )
    base_lr = float(saved["base_lrs"][0]) if saved else config.learning_rate
    if schedule == "restart":
        factor: LRFactor = LinearDecay(start, start + config.steps)
    elif schedule == "continue":
        if saved is None:
            raise WordybirdError(f"{checkpoint} holds no scheduler state ({_SCHEDULER})")
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
    model = _load_checkpoint_model(checkpoint)
    config = replace(config, model=_model_config_of(model))
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
        _stage_checkpoint(checkpoint, staging_dir, trainer, plan, fresh=fresh_optimizer)
        return staging_dir

    try:
        return _execute(
            plan, out, model, data, resume_from=None, resume_recording=False, staging=stage
        )
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)


def _stage_checkpoint(
    source: Path, staging: Path, trainer: WordybirdTrainer, plan: RunPlan, *, fresh: bool
) -> None:
    """A checkpoint folder that makes the Trainer's resume start exactly as planned.

    Weights, RNG and trainer state are the source's (linked); ``optimizer.pt`` is the
    source's Adam state or a fresh optimizer's, with the learning rate the plan's schedule
    gives at the starting step; ``scheduler.pt`` is the plan's schedule at that step.
    """
    for item in source.iterdir():
        if item.name not in (_OPTIMIZER, _SCHEDULER) and item.is_file():
            (staging / item.name).symlink_to(item.resolve())
    optimizer = trainer.create_optimizer()
    if fresh:
        state = optimizer.state_dict()
    else:
        state = _torch_load(source / _OPTIMIZER)
        try:  # validate against this model's optimizer before the Trainer loads it
            optimizer.load_state_dict(state)
            _check_state_shapes(optimizer)
        except (ValueError, KeyError) as exc:
            raise WordybirdError(
                f"the optimizer state in {source} does not fit its model: {exc}"
            ) from exc
        state = optimizer.state_dict()
    factor = plan.lr_factor()
    lr = plan.base_lr * factor(plan.start_step)
    for group in state["param_groups"]:
        group["lr"] = lr
        group["initial_lr"] = plan.base_lr
    torch.save(state, staging / _OPTIMIZER)
    # the schedule's own state at the starting step: a throwaway optimizer with as many
    # groups carries it, since LambdaLR needs one to exist
    dummy = torch.optim.SGD(
        [{"params": [torch.zeros(1)], "initial_lr": plan.base_lr} for _ in state["param_groups"]],
        lr=plan.base_lr,
    )
    scheduler = LambdaLR(dummy, factor, last_epoch=plan.start_step - 1)
    torch.save(scheduler.state_dict(), staging / _SCHEDULER)


def _check_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError if a loaded state tensor does not have its parameter's shape.

    ``load_state_dict`` compares only the number of parameters in each group: Adam state of
    a model of other sizes loads, and the first optimizer step fails, after the initial
    state was recorded.
    """
    for param, state in optimizer.state.items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                raise ValueError(
                    f"its {name} has shape {list(value.shape)} for a parameter of shape "
                    f"{list(param.shape)}"
                )


# -- the summary --------------------------------------------------------------------------------


def summarize(
    out: Path, trainer: WordybirdTrainer, control: _RunControl, plan: RunPlan
) -> dict[str, Any]:
    """The notebook's closing numbers, read back lazily; written to ``summary.json``."""
    from safetensors.torch import load_file

    import wordybird

    logged = [
        (int(e["step"]), float(e["loss"]))
        for e in trainer.state.log_history
        if "loss" in e and e.get("step", 0) > plan.start_step
    ]
    summary: dict[str, Any] = {
        "first_step": plan.start_step,
        "last_step": trainer.state.global_step,
        "seconds_per_step": control.seconds_per_step,
        "checkpoint": str(out / f"{CHECKPOINT_PREFIX}{trainer.state.global_step}"),
    }
    if logged:
        summary["loss_first"] = {"step": logged[0][0], "loss": logged[0][1]}
        summary["loss_last"] = {"step": logged[-1][0], "loss": logged[-1][1]}
    if (out / RECORDING).exists():
        untrained = load_file(str(out / MASKS))["untrained_indices"]
        with wordybird.open(out / RECORDING) as rec:
            summary["recording"] = str(out / RECORDING)
            summary["recorded_steps"] = len(rec)
            if len(rec) >= 2 and len(untrained):
                emb = rec["embeddings"]
                first, last = emb[0][untrained].float(), emb[-1][untrained].float()
                disp = torch.linalg.vector_norm(last - first, dim=1)
                summary["untrained_displacement"] = {
                    "from_step": int(rec.steps[0]),
                    "to_step": int(rec.steps[-1]),
                    "tokens": len(untrained),
                    "max": disp.max().item(),
                    "mean": disp.mean().item(),
                    "median": disp.median().item(),
                }
            summary["bytes_on_disk"] = sum(rec.nbytes_on_disk(f) for f in rec.fields)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(result: RunResult) -> str:
    """The summary as the notebook printed it."""
    s = result.summary
    lines = [
        f"Training complete: steps {result.first_step + 1}-{result.last_step} "
        f"({s['seconds_per_step']:.2f} s/step)"
    ]
    if "loss_first" in s:
        a, b = s["loss_first"], s["loss_last"]
        lines.append(
            f"  Loss: step {a['step']} {a['loss']:.4f} -> step {b['step']} {b['loss']:.4f} "
            f"(change {b['loss'] - a['loss']:+.4f})"
        )
    d = s.get("untrained_displacement")
    if d:
        lines.append(
            f"  Untrained-token displacement (steps {d['from_step']} -> {d['to_step']}, "
            f"{d['tokens']:,} tokens): max {d['max']:.2e}  mean {d['mean']:.2e}  "
            f"median {d['median']:.2e}"
        )
    if "recording" in s:
        lines.append(
            f"  Recording: {s['recording']} ({s['recorded_steps']} steps, "
            f"{s['bytes_on_disk'] / 1e6:.1f} MB on disk)"
        )
    lines.append(f"  Checkpoint: {s['checkpoint']}")
    return "\n".join(lines)
