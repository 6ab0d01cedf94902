"""``wordybird analyze``: the lattice-hop / freeze analysis of a recording, with plots.

A recording in the notebook's layout (an ``embeddings`` field) gets the notebook's
analysis, split by token masks, exactly as it always did; any other recording, the
per-parameter analysis of what it records by name (``<name>/value`` fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from wordybird import opening
from wordybird.analysis.freeze import DEFAULT_THRESHOLD
from wordybird.analysis.parameters import parameter_names
from wordybird.clitypes import PathOrURL, storage_options
from wordybird.errors import WordybirdError
from wordybird.recording import Recording
from wordybird.storage import is_url

if TYPE_CHECKING:
    from wordybird.analysis.hops import Analysis

#: The notebook's layout: the field holding the embedding matrix.
NOTEBOOK_FIELD = "embeddings"


def _open(path: Path | str, options: Mapping[str, str] | None) -> Recording:
    """The one place the analysis opens a recording (a store, an export, an ``s3://`` URL)."""
    return opening.open(path, storage_options=options)


def _analyze_notebook(
    path: Path | str,
    masks_path: Path | str | None,
    threshold: float,
    storage_options: dict[str, str],
    *,
    fallback_masks: Path | str | None = None,
) -> Analysis:
    """Open one recording in the notebook's layout, find its masks (given, beside it, else
    ``fallback_masks``) and analyse it."""
    from wordybird.analysis import hops
    from wordybird.analysis.masks import default_masks_path, load_masks, masks_exist
    from wordybird.analysis.run_inputs import embeddings_shape

    options = storage_options or None
    with _open(path, options) as recording:
        if masks_path is None:
            masks_path = default_masks_path(recording.path)
            if fallback_masks is not None and not masks_exist(masks_path, options):
                masks_path = fallback_masks
        vocab_size, _ = embeddings_shape(recording)
        masks = load_masks(masks_path, vocab_size, options if is_url(masks_path) else None)
        return hops.analyze(recording, masks, threshold=threshold, progress=True)


def _notebook(
    recording: Path | str,
    masks: Path | str | None,
    out: Path | None,
    compare: tuple[Path | str, ...],
    threshold: float,
    storage_options: dict[str, str],
) -> None:
    from wordybird.analysis.plots import write_plots
    from wordybird.analysis.report import format_report, write_outputs

    main = _analyze_notebook(recording, masks, threshold, storage_options)
    others = [
        _analyze_notebook(
            other, None, threshold, storage_options, fallback_masks=main.summary["masks"]
        )
        for other in compare
    ]
    out_dir = out if out is not None else Path(main.path).parent / "analysis"
    written = write_outputs(main, others, out_dir) + write_plots(main, others, out_dir)
    click.echo(format_report(main, others))
    click.echo(f"  wrote {', '.join(str(p) for p in written)}")


def _by_name(
    recording: Recording, parameters: tuple[str, ...], out: Path | None, threshold: float
) -> None:
    from wordybird.analysis.parameter_report import format_report, write_outputs
    from wordybird.analysis.parameters import analyze_parameters

    result = analyze_parameters(
        recording, parameters=parameters, threshold=threshold, progress=True
    )
    out_dir = out if out is not None else Path(result.path).parent / "analysis"
    written = write_outputs(result, out_dir)
    click.echo(format_report(result))
    click.echo(
        f"  wrote {written[0]}, {len(written) - 2} per-parameter files in "
        f"{written[1].parent}, {written[-1]}"
    )


@click.command()
@click.argument("recording", type=PathOrURL())
@click.option(
    "--parameter",
    "parameters",
    multiple=True,
    help="A recording by name: the parameters to analyse, by name or glob pattern "
    "(repeatable). Default: every recorded floating parameter.",
)
@click.option(
    "--masks",
    type=PathOrURL(),
    help="The notebook's layout: token masks (safetensors with trained_mask/untrained_mask; "
    "a file or an s3:// URL). Default: token_masks.safetensors beside the recording (in the "
    "bucket for an s3:// one, where `wordybird train` puts it).",
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
    help="The notebook's layout: another recording to overlay in the plots (repeatable). Its "
    "masks are the token_masks.safetensors beside it, else the main run's.",
)
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Moving (hop) fraction below which a step counts as frozen (the notebook's layout: "
    "of the untrained tokens).",
)
@storage_options
def analyze(
    recording: Path | str,
    parameters: tuple[str, ...],
    masks: Path | str | None,
    out: Path | None,
    compare: tuple[Path | str, ...],
    threshold: float,
    storage_options: dict[str, str],
) -> None:
    """Which coordinates of the recorded bf16 (or any float) parameters move at each step,
    which froze, when, and why.

    The notebook's layout (an `embeddings` field, with token masks): analysis.json,
    analysis.csv, hops.png and displacement.png, and the freeze step with its explanation
    from the recorded Adam state. A recording by name (`watch`, `RecorderCallback` with
    `parameters=`): analysis.json, parameters/<name>.csv and .png per parameter and
    overview.png, and a report naming the frozen parameters first, each with the step it
    froze from, the cause (rounding, zero gradient, zero learning rate, or unexplained) and
    what would have kept it moving.
    """
    if out is None and is_url(recording):
        raise WordybirdError(f"{recording} is in object storage: give a local --out folder")
    with _open(recording, storage_options or None) as opened:
        notebook = NOTEBOOK_FIELD in opened.fields
        if notebook and parameters:
            raise WordybirdError(
                f"{opened.path} is in the notebook's layout (an 'embeddings' field, analysed "
                "by token masks); --parameter chooses parameters of a recording by name"
            )
        if not notebook:
            given = [o for o, v in (("--masks", masks), ("--compare", compare)) if v]
            if given and parameter_names(opened):
                verb = "apply" if len(given) > 1 else "applies"
                raise WordybirdError(
                    f"{' and '.join(given)} {verb} to the notebook's layout (an 'embeddings' "
                    f"field); {opened.path} records parameters by name"
                )
            _by_name(opened, parameters, out, threshold)
            return
    _notebook(recording, masks, out, compare, threshold, storage_options)
