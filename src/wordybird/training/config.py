"""What a run is: its settings (:class:`TrainConfig`, the notebook's defaults), the plan one
invocation carries out (saved as ``run.json`` so ``--resume`` can redo it), where its files
go (:class:`RunFolder`), what it produced, and the names of the files a run folder holds."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from wordybird.constants import Mode
from wordybird.errors import WordybirdError
from wordybird.storage import RUN_RECORDING, Location, is_url
from wordybird.training.model import ComputeDtype, ModelConfig
from wordybird.training.schedules import LRFactor, schedule_from_state

Schedule = Literal["restart", "continue", "constant"]

MASKS = "token_masks.safetensors"
SUMMARY = "summary.json"
RUN_FILE = "run.json"
CHECKPOINT_PREFIX = "checkpoint-"


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
    mode: Mode = "default"
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

    def with_absolute_corpus(self) -> TrainConfig:
        """This config with its corpus as an absolute path: the run file must name the same
        file from any folder, for ``--resume`` and for a ``continue`` that inherits it."""
        if self.corpus is None:
            return self
        return replace(self, corpus=str(Path(self.corpus).resolve()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**{**data, "model": ModelConfig(**data["model"])})


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
    #: an ``s3://`` --out: the URL the recording streams to, beside copies of the run's
    #: files (None: everything is in the run folder). Never its storage options.
    remote: str | None = None

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


@dataclass(frozen=True)
class RunFolder:
    """Where a run's files go.

    ``local`` is the run folder: the Trainer writes its checkpoints there (it needs a local
    folder), beside ``run.json``, the token masks and the summary. With an ``s3://`` --out,
    ``remote`` is that URL: the recording streams to ``<remote>/recording.zarr`` and
    :meth:`upload` puts copies of the small files beside it, so that the bucket holds a
    recording that explains itself (``wordybird analyze`` finds its masks there).
    """

    local: Path
    remote: Location | None = None

    @classmethod
    def of(
        cls,
        out: str | os.PathLike[str],
        local_dir: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> RunFolder:
        """The run folder ``out``, or for an ``s3://`` URL that URL with ``local_dir`` (by
        default :func:`default_local_dir`)."""
        if not is_url(out):
            if local_dir is not None:
                raise WordybirdError(
                    f"--local-dir is for an s3:// --out; the local --out {out} is the run "
                    "folder itself"
                )
            Location.of(out, storage_options)  # refuses storage options for a local --out
            return cls(Path(out))
        remote = Location.of(out, storage_options)
        local = Path(local_dir) if local_dir is not None else default_local_dir(remote.text)
        return cls(local, remote)

    @property
    def recording(self) -> Location:
        """Where the run's recording is."""
        return (self.remote or Location.of(self.local)).child(RUN_RECORDING)

    def upload(self, *names: str) -> None:
        """Copy the run folder's files ``names`` beside the remote recording (each one PUT,
        so a copy is the whole file or the previous one); nothing for a local run."""
        if self.remote is None:
            return
        from wordybird.storage import put_object

        for name in names:
            put_object(self.remote.child(name), (self.local / name).read_bytes())

    def __str__(self) -> str:
        return str(self.remote or self.local)


def default_local_dir(url: str) -> Path:
    """The local run folder of an ``s3://`` --out when no --local-dir is given: the URL's
    bucket and key under ``s3/`` in the current folder (``s3://my-bucket/runs/wb1`` ->
    ``s3/my-bucket/runs/wb1``), so that every URL has its own and ``--resume`` finds it."""
    parts = url.removeprefix("s3://").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise WordybirdError(f"cannot name a local run folder after {url}: give --local-dir")
    return Path("s3", *parts)


def write_run_file(folder: Path, plan: RunPlan) -> None:
    """Save ``plan`` as the run file of the run in ``folder``."""
    (folder / RUN_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")


def read_run_file(folder: Path) -> RunPlan | None:
    """The plan of the run in ``folder``, None if it holds none; a damaged file is refused."""
    path = folder / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WordybirdError(f"cannot read the run file {path}: {exc}") from exc
    try:
        return RunPlan.from_dict(data)
    except (AttributeError, KeyError, TypeError) as exc:
        raise WordybirdError(f"{path} is not a wordybird run file: {exc!r}") from exc


@dataclass
class RunResult:
    """What a finished run produced."""

    out: Path
    first_step: int
    last_step: int
    seconds_per_step: float
    checkpoint: Path
    summary: dict[str, Any]
