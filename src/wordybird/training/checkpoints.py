"""Trainer checkpoints: finding a run's, loading one's model safely, and staging a copy
whose optimizer and scheduler state make the Trainer's resume start exactly as planned
(``wordybird continue``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import GPT2LMHeadModel

from wordybird.errors import WordybirdError
from wordybird.storage import is_url
from wordybird.training.config import CHECKPOINT_PREFIX, RunPlan
from wordybird.training.model import ModelConfig
from wordybird.training.processes import Processes
from wordybird.training.schedules import WordybirdTrainer

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_CONFIG_FILE = "config.json"


def checkpoint_folder(path: Path) -> Path:
    """``path``, refused unless it is a folder."""
    if not path.is_dir():
        raise WordybirdError(f"checkpoint {path} does not exist or is not a folder")
    return path


def local_checkpoint(checkpoint: str | os.PathLike[str]) -> Path:
    """``checkpoint`` as a local path; an ``s3://`` URL is refused (the Trainer reads a
    checkpoint from disk)."""
    if is_url(checkpoint):
        raise WordybirdError(
            f"cannot continue from {checkpoint}: a checkpoint must be a local folder "
            "(the Trainer reads it from disk)"
        )
    return Path(checkpoint)


def is_weights_only(folder: Path) -> bool:
    """Whether ``folder`` holds a model as ``save_pretrained`` writes it, and no training
    state: what the notebook's ``from_pretrained`` loaded."""
    return (folder / MODEL_CONFIG_FILE).is_file() and not any(
        (folder / name).exists() for name in (TRAINER_STATE_FILE, OPTIMIZER_FILE)
    )


def step_of(checkpoint: Path) -> int:
    """The step of a ``checkpoint-N`` folder."""
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(out: Path) -> dict[int, Path]:
    found = {}
    for path in out.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if path.is_dir() and suffix.isdigit():
            found[int(suffix)] = path
    return found


def load_checkpoint_model(checkpoint: Path) -> GPT2LMHeadModel:
    """The checkpoint's GPT-2, refused unless every one of its weights comes from the folder.

    ``from_pretrained`` gives weights the folder lacks random values, with only a log line:
    another model's checkpoint (a Llama's) would silently "continue" as a fresh GPT-2. A
    folder without ``config.json`` would be looked up on the Hub as a model name instead.
    """
    if not (checkpoint / MODEL_CONFIG_FILE).is_file():
        raise WordybirdError(f"{checkpoint} holds no model ({MODEL_CONFIG_FILE} is missing)")
    try:
        model, info = GPT2LMHeadModel.from_pretrained(
            str(checkpoint), dtype=torch.bfloat16, output_loading_info=True, local_files_only=True
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


def model_config_of(model: GPT2LMHeadModel) -> ModelConfig:
    cfg = model.config
    return ModelConfig(
        cfg.vocab_size, cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions, cfg.resid_pdrop
    )


def last_complete_checkpoint(out: Path) -> Path | None:
    """The run's newest checkpoint that the Trainer finished writing, if any."""
    complete = {step: path for step, path in list_checkpoints(out).items() if is_complete(path)}
    return complete[max(complete)] if complete else None


def is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint``: it writes trainer_state.json
    last, so a process killed while saving leaves a folder without it (or with a torn one),
    which resuming from would fail on, every time, as it stays the newest folder."""
    try:
        trainer_state(checkpoint)
    except WordybirdError:
        return False
    return True


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAINER_STATE_FILE
    if not path.is_file():
        raise WordybirdError(
            f"{checkpoint} is not a Trainer checkpoint ({TRAINER_STATE_FILE} missing)"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WordybirdError(f"cannot read {path}: {exc}") from exc


def check_process_count(checkpoint: Path, processes: int) -> None:
    """Refuse to go on from ``checkpoint`` with another number of processes than wrote it.

    The Trainer saves each process's random state (``rng_state.pth`` for one process,
    ``rng_state_<rank>.pth`` for several) and on resuming, a process that finds no file of its
    own only logs it and goes on from a fresh state: dropout would draw other masks than the
    uninterrupted run, silently. A checkpoint without random state (weights only) fits any.
    """
    per_process = list(checkpoint.glob("rng_state_*.pth"))
    saved = len(per_process) or (1 if (checkpoint / "rng_state.pth").is_file() else None)
    if saved is not None and saved != processes:
        raise WordybirdError(
            f"{checkpoint} was written by {_processes(saved)} and this run has "
            f"{_processes(processes)}: each process goes on from its own saved random state "
            f"(dropout masks, ...), so run it as {_processes(saved)}"
        )


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise WordybirdError(f"cannot read {path}: {exc}") from exc


@contextmanager
def staged_checkpoint(
    source: Path, out: Path, trainer: WordybirdTrainer, plan: RunPlan, processes: Processes
) -> Iterator[Path]:
    """A checkpoint folder in ``out`` that makes the Trainer's resume start exactly as
    planned; removed when the block ends.

    Weights, RNG and trainer state are the source's (linked); ``optimizer.pt`` is the
    source's Adam state or, with ``plan.fresh_optimizer``, a fresh optimizer's, with the
    learning rate the plan's schedule gives at the starting step; ``scheduler.pt`` is the
    plan's schedule at that step. In a multi-process run the main process stages it and
    removes it once every process is through the block; the others read it.
    """
    staging = None
    with processes.main_first():
        if processes.is_main:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
            try:
                _stage(source, staging, trainer, plan)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    staging = processes.share(staging)
    try:
        yield staging
    except BaseException:
        if processes.is_main:  # no waiting for the others: they stop with this process
            shutil.rmtree(staging, ignore_errors=True)
        raise
    processes.wait_for_everyone()
    if processes.is_main:
        shutil.rmtree(staging, ignore_errors=True)


def _stage(source: Path, staging: Path, trainer: WordybirdTrainer, plan: RunPlan) -> None:
    for item in source.iterdir():
        if item.name not in (OPTIMIZER_FILE, SCHEDULER_FILE) and item.is_file():
            (staging / item.name).symlink_to(item.resolve())
    optimizer = trainer.create_optimizer()
    if plan.fresh_optimizer:
        state = optimizer.state_dict()
    else:
        state = torch_load(source / OPTIMIZER_FILE)
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
    torch.save(state, staging / OPTIMIZER_FILE)
    # the schedule's own state at the starting step: a throwaway optimizer with as many
    # groups carries it, since LambdaLR needs one to exist
    dummy = torch.optim.SGD(
        [{"params": [torch.zeros(1)], "initial_lr": plan.base_lr} for _ in state["param_groups"]],
        lr=plan.base_lr,
    )
    scheduler = LambdaLR(dummy, factor, last_epoch=plan.start_step - 1)
    torch.save(scheduler.state_dict(), staging / SCHEDULER_FILE)


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
