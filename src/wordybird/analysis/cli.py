"""``wordybird analyze``: the lattice-hop / freeze analysis of a recording, with plots."""

from __future__ import annotations

from pathlib import Path

import click

from wordybird import opening
from wordybird.analysis import hops
from wordybird.analysis.hops import DEFAULT_THRESHOLD, Analysis
from wordybird.analysis.masks import default_masks_path, load_masks, masks_exist
from wordybird.analysis.plots import write_plots
from wordybird.analysis.report import format_report, write_outputs
from wordybird.analysis.run_inputs import embeddings_shape
from wordybird.clitypes import PathOrURL, storage_options
from wordybird.errors import WordybirdError
from wordybird.storage import is_url


def _analyze_path(
    path: Path | str,
    masks_path: Path | str | None,
    threshold: float,
    storage_options: dict[str, str],
    *,
    fallback_masks: Path | str | None = None,
) -> Analysis:
    """Open one recording, find its masks (given, beside it, else ``fallback_masks``) and
    analyse it."""
    options = storage_options or None
    with opening.open(path, storage_options=options) as recording:
        if masks_path is None:
            masks_path = default_masks_path(recording.path)
            if fallback_masks is not None and not masks_exist(masks_path, options):
                masks_path = fallback_masks
        vocab_size, _ = embeddings_shape(recording)
        masks = load_masks(masks_path, vocab_size, options if is_url(masks_path) else None)
        return hops.analyze(recording, masks, threshold=threshold, progress=True)


@click.command()
@click.argument("recording", type=PathOrURL())
@click.option(
    "--masks",
    type=PathOrURL(),
    help="Token masks (safetensors with trained_mask/untrained_mask; a file or an s3:// "
    "URL). Default: token_masks.safetensors beside the recording (in the bucket for an "
    "s3:// one, where `wordybird train` puts it).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder. Default: analysis/ beside the recording (give it for an s3:// one).",
)
@click.option(
    "--compare",
    "compare",
    multiple=True,
    type=PathOrURL(),
    help="Another recording to overlay in the plots (repeatable). Its masks are the "
    "token_masks.safetensors beside it, else the main run's.",
)
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Untrained hop fraction below which a step counts as frozen.",
)
@storage_options
def analyze(
    recording: Path | str,
    masks: Path | str | None,
    out: Path | None,
    compare: tuple[Path | str, ...],
    threshold: float,
    storage_options: dict[str, str],
) -> None:
    """Which bf16 embedding coordinates hop at each step, and why untrained ones freeze.

    Writes analysis.json, analysis.csv, hops.png and displacement.png, and prints the
    freeze step with its explanation from the recorded Adam state.
    """
    if out is None and is_url(recording):
        raise WordybirdError(f"{recording} is in object storage: give a local --out folder")
    main = _analyze_path(recording, masks, threshold, storage_options)
    others = [
        _analyze_path(other, None, threshold, storage_options, fallback_masks=main.summary["masks"])
        for other in compare
    ]
    out_dir = out if out is not None else Path(main.path).parent / "analysis"
    written = write_outputs(main, others, out_dir) + write_plots(main, others, out_dir)
    click.echo(format_report(main, others))
    click.echo(f"  wrote {', '.join(str(p) for p in written)}")
