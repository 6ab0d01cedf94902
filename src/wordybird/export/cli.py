"""``wordybird export``."""

from __future__ import annotations

import ctypes
from pathlib import Path

import click

from wordybird import opening
from wordybird.clitypes import PathOrURL, storage_options

#: glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def _keep_memory_flat() -> None:
    """Make the reader threads share one malloc arena (glibc; no-op elsewhere).

    Each thread that decodes the store (ours, zarr's event loop and codec workers) gets its
    own glibc arena, and the multi-megabyte per-step buffers freed there stay resident in
    each. One arena reuses the same memory for every step, at no measurable speed cost (a
    fixed mmap threshold, the other cure, slowed reads with page faults; both measured:
    benchmarks/bench_export.py). The setting is process-wide, so only the CLI, which owns
    its process, makes it; ``export_safetensors`` leaves a caller's allocator alone.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, 1)


@click.command()
@click.argument("recording", type=PathOrURL())
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
@click.option(
    "--steps-per-file",
    type=click.IntRange(min=1),
    metavar="K",
    help="Split into files of at most K steps: OUT-00001-of-0000N.safetensors ... and "
    "OUT.safetensors.index.json (wordybird.open reads the set as one recording).",
)
@click.option(
    "--max-file-size",
    metavar="SIZE",
    help="Split so that no file is larger than SIZE (e.g. 4GB, 512MiB); as --steps-per-file.",
)
@click.option(
    "--skip-damaged",
    is_flag=True,
    help="Check RECORDING first and leave out steps that cannot be read (listed in the "
    "file's metadata as skipped_damaged_steps). Default: a damaged step stops the export.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT (or a split export's files).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@storage_options
def export(
    recording: Path | str,
    out: Path,
    steps: str | None,
    fields: str | None,
    steps_per_file: int | None,
    max_file_size: str | None,
    skip_damaged: bool,
    overwrite: bool,
    quiet: bool,
    storage_options: dict[str, str],
) -> None:
    """Write RECORDING (a Zarr store, local or s3://, or an export) as the local
    safetensors file OUT.

    The file has the notebook's layout (load it with safetensors' load_file) and is
    streamed: memory stays flat whatever its size. OUT appears only once complete. A file
    too large for the RAM of whoever loads it can be split into several such files.
    """
    from tqdm import tqdm

    from wordybird.export.writer import export_safetensors

    _keep_memory_flat()
    with (
        opening.open(recording, storage_options=storage_options or None) as rec,
        tqdm(unit="B", unit_scale=True, disable=quiet, desc=out.name, leave=False, delay=1) as bar,
    ):
        path = export_safetensors(
            rec,
            out,
            steps=steps,
            fields=fields,
            overwrite=overwrite,
            progress=bar.update,
            steps_per_file=steps_per_file,
            max_file_size=max_file_size,
            skip_damaged=skip_damaged,
        )
    if path == out:
        click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
        return
    from wordybird.export.reader import SplitSafetensorsRecording

    with SplitSafetensorsRecording(path) as split:
        files = split.files
    total = sum(f.stat().st_size for f in files)
    click.echo(f"wrote {len(files)} files ({total:,} bytes) and their index {path}")
