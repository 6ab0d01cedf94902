"""``wordybird train``, ``wordybird continue`` and ``wordybird masks``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from wordybird.clitypes import PathOrURL, storage_options
from wordybird.constants import MODES
from wordybird.errors import WordybirdError
from wordybird.training.processes import is_main_process, process_count

OUT_HELP = (
    "or an s3://bucket/prefix URL: the recording streams to <URL>/recording.zarr, beside "
    "copies of run.json, the token masks and the summary; the checkpoints go to --local-dir."
)


def _quiet_libraries() -> None:
    # The Trainer's own chatter (config warnings, info logs) would bury the progress bar.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by train and continue (defaults: the notebook's)."""
    options = [
        click.option(
            "--corpus",
            type=click.Path(path_type=Path),
            default=None,
            help="UTF-8 text to train on (default: the Python stdlib's documentation).",
        ),
        click.option(
            "--steps", type=int, default=100, show_default=True, help="Optimizer steps to run."
        ),
        click.option(
            "--batch-size",
            type=int,
            default=32,
            show_default=True,
            help="Samples per optimizer step: under torchrun or accelerate launch, the global "
            "batch, split evenly across the processes.",
        ),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option(
            "--record-every",
            type=int,
            default=1,
            show_default=True,
            help="Record every K-th step (plus the starting state).",
        ),
        click.option("--no-record", is_flag=True, help="Train without recording."),
        click.option(
            "--checkpoint-every",
            type=int,
            default=None,
            help="Also write a checkpoint every K steps (one is always written at the end).",
        ),
        click.option(
            "--compute-dtype",
            type=click.Choice(["auto", "float32", "bfloat16"]),
            default="auto",
            show_default=True,
            help="Forward/backward dtype; parameters stay bf16. auto: fp32 on CPU.",
        ),
        click.option(
            "--mode",
            type=click.Choice(MODES),
            default="default",
            show_default=True,
            help="Recording layout (see the recorder's FORMAT.md).",
        ),
        click.option(
            "--durable",
            is_flag=True,
            help="fsync each recorded step before committing it, so that a power loss keeps "
            "every committed step (slower; see the recorder's FORMAT.md).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
        click.option(
            "--local-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="With an s3:// --out: the local run folder (checkpoints, run.json, token "
            "masks, summary). Default: s3/BUCKET/PREFIX in the current folder.",
        ),
        storage_options,
        # model size, for quick experiments and tests; the defaults are Wordybird's
        click.option("--n-embd", type=int, default=64, hidden=True),
        click.option("--n-layer", type=int, default=2, hidden=True),
        click.option("--n-head", type=int, default=2, hidden=True),
        click.option("--n-positions", type=int, default=128, hidden=True),
        click.option("--dropout", type=float, default=0.1, hidden=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(options: dict[str, Any], learning_rate: float = 1e-3):
    from wordybird.training.config import TrainConfig
    from wordybird.training.model import ModelConfig

    return TrainConfig(
        steps=options["steps"],
        batch_size=options["batch_size"],
        learning_rate=learning_rate,
        seed=options["seed"],
        record_every=None if options["no_record"] else options["record_every"],
        checkpoint_every=options["checkpoint_every"],
        compute_dtype=options["compute_dtype"],
        mode=options["mode"],
        durable=options["durable"],
        corpus=str(options["corpus"]) if options["corpus"] is not None else None,
        model=ModelConfig(
            n_embd=options["n_embd"],
            n_layer=options["n_layer"],
            n_head=options["n_head"],
            n_positions=options["n_positions"],
            dropout=options["dropout"],
        ),
    )


@click.command()
@_run_options
@click.option(
    "--out",
    type=PathOrURL(),
    default=Path("runs/wb1"),
    show_default=True,
    help=f"Run folder: recording, masks, checkpoints, summary; {OUT_HELP}",
)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in --out from its last checkpoint (its settings "
    "come from the run's run.json; other options but --local-dir and --storage-option are "
    "ignored).",
)
def train(out: Path | str, lr: float, resume: bool, **options: Any) -> None:
    """Train Wordybird from scratch, recording every step (default: WB1, 100 steps)."""
    from wordybird.training import experiments

    _quiet_libraries()
    places = {"local_dir": options["local_dir"], "storage_options": options["storage_options"]}
    if resume and options["overwrite"]:
        raise WordybirdError("--resume and --overwrite exclude each other")
    _say_local_dir(out, options)
    if resume:
        result = experiments.resume(out, **places)
    else:
        config = _config(options, lr)
        if process_count() > 1:
            _say(_setting_line("batch_size", config.batch_size, "given"))
        result = experiments.train(config, out, overwrite=options["overwrite"], **places)
    if result is not None:  # None: a process other than the main one, which prints
        click.echo(experiments.format_summary(result))


def _say_local_dir(out: Path | str, options: dict[str, Any]) -> None:
    """For an s3:// --out, say at the start where the checkpoints go."""
    from wordybird.storage import is_url
    from wordybird.training.config import RunFolder

    if is_url(out):
        folder = RunFolder.of(out, options["local_dir"], options["storage_options"])
        _say(
            f"local run folder: {folder.local} (checkpoints, run.json, token masks, summary; "
            "--local-dir to choose)"
        )


@click.command(name="continue")
@click.argument("checkpoint", type=PathOrURL())
@_run_options
@click.option(
    "--out",
    type=PathOrURL(),
    default=Path("runs/wb3"),
    show_default=True,
    help=f"Run folder of the continued run; {OUT_HELP}",
)
@click.option(
    "--schedule",
    type=click.Choice(["restart", "continue", "constant"]),
    default="restart",
    show_default=True,
    help="restart: new linear decay over the new steps; continue: the saved "
    "scheduler as it is; constant: hold the LR of the checkpoint's last step.",
)
@click.option(
    "--fresh-optimizer",
    is_flag=True,
    help="Start Adam from zero instead of the checkpoint's state (as the notebook did).",
)
@click.pass_context
def continue_(
    ctx: click.Context,
    checkpoint: Path | str,
    out: Path | str,
    schedule: str,
    fresh_optimizer: bool,
    **options: Any,
) -> None:
    """Continue training from CHECKPOINT (default: WB3, 100 more steps).

    The corpus, batch size, seed and recording mode are those of the checkpoint's run
    (the run.json beside the checkpoint) unless given; the command says where each came from.
    """
    from wordybird.training import experiments
    from wordybird.training.continuing import INHERITED, inherit_settings

    _quiet_libraries()
    from wordybird.training.checkpoints import local_checkpoint

    checkpoint = local_checkpoint(checkpoint)
    given = [n for n in INHERITED if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]
    config, sources = inherit_settings(checkpoint, _config(options), given)
    for name, source in sources.items():
        _say(_setting_line(name, getattr(config, name), source))
    _say_local_dir(out, options)
    result = experiments.continue_training(
        checkpoint,
        out,
        config,
        schedule=schedule,
        fresh_optimizer=fresh_optimizer,
        overwrite=options["overwrite"],
        local_dir=options["local_dir"],
        storage_options=options["storage_options"],
    )
    if result is not None:
        click.echo(experiments.format_summary(result))


def _say(line: str) -> None:
    """Print ``line`` once: in the main process of a multi-process run."""
    if is_main_process():
        click.echo(line)


def _setting_line(name: str, value: object, source: str) -> str:
    """``batch size: 2 (from the checkpoint's run)``, ``seed: 7 (from --seed)``, …; under a
    launcher, the batch size says how the processes share it."""
    label = {"batch_size": "batch size", "mode": "recording mode"}.get(name, name)
    shown = "the Python stdlib's documentation" if value is None else value
    origin = {"run": "from the checkpoint's run", "given": f"from --{name.replace('_', '-')}"}
    line = f"{label}: {shown} ({origin.get(source, 'default')})"
    processes = process_count()
    if name == "batch_size" and processes > 1:
        line += f"; the global batch: {value / processes:g} in each of {processes} processes"
    return line


@click.command()
@click.option(
    "--corpus",
    type=click.Path(path_type=Path),
    default=None,
    help="UTF-8 text (default: the Python stdlib's documentation).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="The safetensors file to write."
)
def masks(corpus: Path | None, out: Path) -> None:
    """Write the token masks: a token is "trained" when it occurs in the corpus."""
    from wordybird.training.data import load_corpus, save_token_masks, token_masks, tokenize
    from wordybird.training.offline import offline

    text = load_corpus(corpus)
    with offline():
        result = token_masks(tokenize(text))
    save_token_masks(result, out)
    n = int(result["trained_mask"].sum())
    total = len(result["trained_mask"])
    click.echo(
        f"{out}: {n:,} trained ({100 * n / total:.1f}%), {total - n:,} untrained tokens "
        f"(corpus sha256 {text.sha256[:16]}…)"
    )
