"""``wordybird check``."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("recording", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def check(ctx: click.Context, recording: Path, as_json: bool) -> None:
    """Read every committed chunk of RECORDING (a Zarr store) and list damaged steps.

    Verifies each chunk's crc32c and that it decodes, and that no chunk file is missing.
    Exit status 1 when anything is damaged; `wordybird export --skip-damaged` then exports
    the steps that still read.
    """
    from wordybird.recorder.check import check_recording, format_check

    report = check_recording(recording)
    click.echo(json.dumps(report, indent=2) if as_json else format_check(report))
    if report["damaged"]:
        ctx.exit(1)
