"""``wordybird check``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from wordybird.clitypes import PathOrURL, storage_options


@click.command()
@click.argument("recording", type=PathOrURL())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@storage_options
@click.pass_context
def check(
    ctx: click.Context, recording: Path | str, as_json: bool, storage_options: dict[str, str]
) -> None:
    """Read every committed chunk of RECORDING (a Zarr store, local or s3://) and list
    damaged steps.

    Verifies each chunk's crc32c and that it decodes, and that no chunk file is missing.
    Exit status 1 when anything is damaged; `wordybird export --skip-damaged` then exports
    the steps that still read.
    """
    from wordybird.recorder.check import check_recording, format_check

    report = check_recording(recording, storage_options or None)
    click.echo(json.dumps(report, indent=2) if as_json else format_check(report))
    if report["damaged"]:
        ctx.exit(1)
