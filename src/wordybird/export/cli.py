"""``wordybird export`` and ``wordybird inspect``."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import click

#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def _keep_memory_flat() -> None:
    """Make the reader threads share one malloc arena (glibc; no-op elsewhere).

    Each thread that decodes the store (ours, zarr's event loop and codec workers) gets its
    own glibc arena, and the multi-megabyte per-step buffers freed there stay resident:
    ~60-90 MB more at the notebook's shapes. One arena reuses the same memory for every
    step, at no measurable speed cost (a fixed mmap threshold, the other cure, halved the
    read rate with page faults). The setting is process-wide, so only the CLI, which owns
    its process, makes it; ``export_safetensors`` leaves a caller's allocator alone.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, 1)


@click.command()
@click.argument("recording", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--steps",
    metavar="START:STOP",
    help="Recorded step numbers START <= step < STOP (STOP excluded, like a Python slice; "
    "either end may be left out). Default: every committed step.",
)
@click.option(
    "--fields",
    metavar="A,B,...",
    help="Per-step fields to export (recorded_steps and the run's scalars always are). "
    "Default: all.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export(
    recording: Path, out: Path, steps: str | None, fields: str | None, overwrite: bool, quiet: bool
) -> None:
    """Write RECORDING (a Zarr store or an exported file) as one safetensors file OUT.

    The file has the notebook's layout (load it with safetensors' load_file) and is
    streamed: memory stays flat whatever its size. OUT appears only once complete.
    """
    from tqdm import tqdm

    from wordybird.export.writer import export_safetensors

    _keep_memory_flat()
    with tqdm(unit="B", unit_scale=True, disable=quiet, desc=out.name, leave=False, delay=1) as bar:
        path = export_safetensors(
            recording, out, steps=steps, fields=fields, overwrite=overwrite, progress=bar.update
        )
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(path: Path, as_json: bool) -> None:
    """Show what PATH (a Zarr recording or an exported safetensors file) holds."""
    from wordybird.export.inspect import format_report, inspect_recording

    report = inspect_recording(path)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
