"""Streaming export of a recording to one safetensors file, never holding it in memory.

The safetensors library only writes files from tensors in RAM (the notebook's scheme: every
step held, then stacked into a second copy, 7.7 GB peak for 2.6 GB of data). Its format is
simple enough to write ourselves: the header first (every shape is known from the
recording), then each tensor's bytes in file order, read from the store a block of steps at
a time. A reader thread decodes the next blocks while the main thread writes, so the export
runs at close to the disk's speed with a few blocks of memory.

The file appears under its name only when complete: it is written to a hidden temporary
file beside the destination, fsynced, then renamed into place. An exception or Ctrl-C
removes the temporary file; what a ``kill -9`` leaves behind is hidden, never under the
destination's name, and removed by the next export to that name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import secrets
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wordybird.errors import WordybirdError, no_folder
from wordybird.export.layout import (
    SCALAR_METADATA,
    IndexEntry,
    LayoutError,
    SplitIndex,
    TensorEntry,
    encode_header,
    encode_index,
    index_path,
    part_paths,
    plan,
    read_index,
)
from wordybird.recorder.format import STEPS_FIELD
from wordybird.recorder.reader import Recording, open_recording

#: Steps read from the store at once: a field's block of consecutive steps holds at most this
#: many bytes (one step of a large field; all steps of a small one, in one store read).
BLOCK_BYTES = 8 << 20
#: Blocks decoded ahead of the writer. One overlaps decoding with writing; a second one
#: measured no faster (benchmarks/bench_export.py) and cost ~10 MB of peak RSS.
READ_AHEAD = 1
#: Permissions of the exported file (before the umask of whoever reads it: it is data).
FILE_MODE = 0o644

StepRange = tuple[int | None, int | None]


def parse_steps(text: str) -> StepRange:
    """``"START:STOP"`` (either side may be empty) as a half-open step-number range."""
    start, sep, stop = text.partition(":")
    if not sep:
        raise WordybirdError(f"--steps takes START:STOP (STOP excluded), got {text!r}")
    try:
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise WordybirdError(
            f"--steps takes integer step numbers START:STOP, got {text!r}"
        ) from None


def select_positions(rec: Recording, steps: StepRange | str | None) -> range:
    """The positions of the recorded steps START <= step < STOP, all of them inside the run.

    A range reaching outside the recorded steps is an error rather than silently clipped:
    an export is usually meant to hold exactly the asked-for steps.
    """
    recorded = rec.steps
    if not len(recorded):
        raise WordybirdError(f"{rec.path} has no committed step to export")
    if steps is None:
        return range(len(recorded))
    start, stop = parse_steps(steps) if isinstance(steps, str) else steps
    first, last = int(recorded[0]), int(recorded[-1])
    low = first if start is None else start
    high = last + 1 if stop is None else stop
    span = f"recorded steps are {first}..{last}"
    if low < first or high > last + 1:
        raise WordybirdError(f"step range {low}:{high} reaches outside {rec.path} ({span})")
    begin = int(np.searchsorted(recorded, low, side="left"))
    end = int(np.searchsorted(recorded, high, side="left"))
    if begin >= end:
        raise WordybirdError(f"step range {low}:{high} holds no recorded step ({span})")
    return range(begin, end)


def select_fields(rec: Recording, fields: Iterable[str] | str | None) -> list[str]:
    """The per-step fields to export, in recording order; every one when ``fields`` is None."""
    if fields is None:
        return list(rec.fields)
    names = fields.split(",") if isinstance(fields, str) else list(fields)
    wanted = {name.strip() for name in names if name.strip()} - {STEPS_FIELD}
    unknown = sorted(wanted - set(rec.fields))
    if unknown:
        raise WordybirdError(
            f"{rec.path} has no field {', '.join(map(repr, unknown))}; "
            f"it has {', '.join(rec.fields)}"
        )
    if not wanted:
        raise WordybirdError("no field selected to export")
    return [name for name in rec.fields if name in wanted]


def split_metadata(
    metadata: Mapping[str, Any], taken: Iterable[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The notebook's scalars as 0-d tensors, and everything else JSON-encoded for the header.

    A scalar entry that is not a number of its kind (or whose name a field already uses)
    stays in the header metadata rather than being coerced.
    """
    taken = set(taken)
    scalars: dict[str, torch.Tensor] = {}
    provenance: dict[str, str] = {}
    for key, value in metadata.items():
        dtype = SCALAR_METADATA.get(key)
        if dtype is not None and key not in taken and _fits(value, dtype):
            scalars[key] = torch.tensor(value, dtype=dtype)
        else:
            provenance[key] = json.dumps(value)
    return scalars, provenance


def _fits(value: Any, dtype: torch.dtype) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return dtype.is_floating_point or isinstance(value, int) or value.is_integer()


def export_safetensors(
    recording_or_path: Recording | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    steps: StepRange | str | None = None,
    fields: Sequence[str] | str | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    steps_per_file: int | None = None,
    max_file_size: int | str | None = None,
) -> Path:
    """Write a recording (or a step range / some fields of it) as safetensors file(s).

    Args:
        recording_or_path: an open :class:`Recording`, or the path of a Zarr store or of
            an export.
        out: the ``.safetensors`` file to create.
        steps: ``(START, STOP)`` or ``"START:STOP"``: recorded step numbers with
            START <= step < STOP (STOP excluded, like a Python slice); None ends are open.
        fields: the per-step fields to keep (``recorded_steps`` and the run's scalars are
            always written); all of them when None.
        overwrite: replace existing files.
        progress: called with the number of bytes written after each write.
        steps_per_file: split the export into files of at most this many steps each
            (``OUT-00001-of-0000N.safetensors`` …, each in the notebook's layout) and an
            index ``OUT.safetensors.index.json`` that ``wordybird.open`` reads as one.
        max_file_size: split so that no file exceeds this many bytes (an int, or text such
            as ``"4GB"`` or ``"512MiB"``); exclusive with ``steps_per_file``.

    Returns:
        ``out`` (or, split, the index) as a Path, once every file is durably in place.
    """
    out = Path(out)
    split = steps_per_file is not None or max_file_size is not None
    if steps_per_file is not None and max_file_size is not None:
        raise WordybirdError("give either steps_per_file or max_file_size, not both")
    if steps_per_file is not None and steps_per_file < 1:
        raise WordybirdError(f"steps per file must be at least 1, got {steps_per_file}")
    if not split:
        _check_destination(out, overwrite)
    owned = not isinstance(recording_or_path, Recording)
    rec = open_recording(recording_or_path) if owned else recording_or_path
    try:
        positions = select_positions(rec, steps)
        chosen = select_fields(rec, fields)
        scalars, provenance = split_metadata(rec.metadata, [STEPS_FIELD, *chosen])
        full = _FilePlan(rec, positions, chosen, scalars, provenance)
        if not split:
            _check_free_space(out, full.size)
            full.write(out, progress)
            return out
        per_file = (
            full.steps_fitting(parse_size(max_file_size))
            if max_file_size is not None
            else int(steps_per_file or 0)
        )
        parts = [
            full.part(range(a, min(a + per_file, positions.stop)))
            for a in range(positions.start, positions.stop, per_file)
        ]
        return _write_split(out, parts, overwrite, progress)
    finally:
        if owned:
            rec.close()


class _FilePlan:
    """One export file: the steps and fields it holds, its header, and how to write it."""

    def __init__(
        self,
        rec: Recording,
        positions: range,
        chosen: list[str],
        scalars: dict[str, torch.Tensor],
        provenance: dict[str, str],
    ) -> None:
        self.rec, self.positions, self.chosen = rec, positions, chosen
        self.scalars, self.provenance = scalars, provenance
        recorded = rec.steps[positions.start : positions.stop]
        self.tensors = {STEPS_FIELD: torch.from_numpy(np.ascontiguousarray(recorded)), **scalars}
        entries = [
            *(TensorEntry(name, v.dtype, tuple(v.shape)) for name, v in self.tensors.items()),
            *(
                TensorEntry(name, rec.dtype(name), (len(positions), *rec.step_shape(name)))
                for name in chosen
            ),
        ]
        self.placed = plan(entries)
        self.header = encode_header(self.placed, provenance)
        self.size = len(self.header) + self.placed[-1].end
        self.first_step, self.last_step = int(recorded[0]), int(recorded[-1])

    def part(self, positions: range) -> _FilePlan:
        """The file of the same fields and metadata for some of the positions."""
        return _FilePlan(self.rec, positions, self.chosen, self.scalars, self.provenance)

    def steps_fitting(self, max_bytes: int) -> int:
        """How many steps a file of at most ``max_bytes`` holds (this plan's header bounds
        every smaller file's: shapes and offsets only get shorter)."""
        per_step = sum(e.nbytes for e in self.placed if e.shape[:1] == (len(self.positions),))
        fixed = self.size - per_step
        per_step //= len(self.positions)
        if max_bytes < fixed + per_step:
            raise WordybirdError(
                f"a file of at most {max_bytes:,} bytes cannot hold one step: one step's "
                f"file takes {fixed + per_step:,} bytes"
            )
        return (max_bytes - fixed) // per_step

    def write(self, out: Path, progress: Callable[[int], None] | None) -> None:
        """Stream the file to ``out`` (atomically: complete under that name, or absent)."""
        jobs = (
            job
            for entry in self.placed
            for job in (
                [partial(self.tensors.__getitem__, entry.name)]
                if entry.name in self.tensors
                else _blocks(self.rec, entry.name, self.positions)
            )
        )
        with _atomic_file(out) as fd:
            _write(fd, memoryview(self.header), progress)
            for block in _read_ahead(jobs):
                _write(fd, _bytes_of(block), progress)
            written = os.lseek(fd, 0, os.SEEK_CUR)
            if written != self.size:  # never leave a file its header belies
                raise WordybirdError(
                    f"{self.rec.path} gave {written:,} bytes for {out}, its header announced "
                    f"{self.size:,}"
                )


def _write_split(
    out: Path, parts: list[_FilePlan], overwrite: bool, progress: Callable[[int], None] | None
) -> Path:
    """Write each part as its own file, then the index that makes them one recording.

    The index is written last: every file under its final name is complete, and the set
    is whole once the index names it. With ``overwrite``, files of a replaced split export
    that the new one does not reuse are removed after the new index is in place.
    """
    paths, index = part_paths(out, len(parts)), index_path(out)
    for path in [*paths, index]:
        _check_destination(path, overwrite)
    _check_free_space(out, sum(part.size for part in parts))
    replaced = _listed_files(index) - set(paths) if index.exists() else set()
    for path, part in zip(paths, parts, strict=True):
        part.write(path, progress)
    entries = [
        IndexEntry(path.name, part.first_step, part.last_step, len(part.positions), part.size)
        for path, part in zip(paths, parts, strict=True)
    ]
    with _atomic_file(index) as fd:
        _write(fd, memoryview(encode_index(SplitIndex(entries, parts[0].chosen))), None)
    for path in replaced:
        path.unlink(missing_ok=True)
    return index


def _listed_files(index: Path) -> set[Path]:
    """The files an existing index names (none if it is not a readable index)."""
    try:
        return {index.parent / entry.name for entry in read_index(index).files}
    except (LayoutError, OSError):
        return set()


#: A size in bytes, optionally with a decimal (kB, MB, GB, TB) or binary (KiB … TiB) unit.
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*(?:([kmgt])(i?)b?|b?)\s*", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes from an int or text such as ``4GB``, ``500 MB``, ``2GiB`` or ``1e9``."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size)
        if match is None:
            raise WordybirdError(
                f"not a size: {size!r} (give bytes, or a number with kB, MB, GB, MiB, GiB)"
            )
        number, prefix, binary = match.groups()
        power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
        scaled = float(number) * (1024 if binary else 1000) ** power
        if not math.isfinite(scaled):  # 1e400 parses, as infinity
            raise WordybirdError(f"{size!r} is too large for a file size")
        value = int(scaled)
    if value <= 0:
        raise WordybirdError(f"a file size must be positive, got {size!r}")
    return value


def _blocks(rec: Recording, field: str, positions: range) -> Iterator[Callable[[], torch.Tensor]]:
    """Reads of ``field`` over ``positions`` in blocks of at most BLOCK_BYTES (one step min)."""
    step_nbytes = max(1, int(np.prod(rec.step_shape(field))) * rec.dtype(field).itemsize)
    per_block = max(1, BLOCK_BYTES // step_nbytes)
    for start in range(positions.start, positions.stop, per_block):
        yield partial(rec[field].__getitem__, slice(start, min(start + per_block, positions.stop)))


def _read_ahead(jobs: Iterator[Callable[[], torch.Tensor]]) -> Iterator[torch.Tensor]:
    """Run the reads on one worker thread, READ_AHEAD blocks ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wordybird-export") as pool:
        pending: deque[Future[torch.Tensor]] = deque()
        try:
            for job in jobs:
                pending.append(pool.submit(job))
                if len(pending) > READ_AHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """A tensor's bytes in memory order (little-endian on every platform torch supports)."""
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _write(fd: int, data: memoryview, progress: Callable[[int], None] | None) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
        if progress is not None:
            progress(written)


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.parent.is_dir():
        raise WordybirdError(f"cannot write {out}: {no_folder(out.parent)}")
    if out.is_dir():
        raise WordybirdError(f"cannot write {out}: it is a folder")
    if out.exists() and not overwrite:
        raise WordybirdError(
            f"{out} already exists; pass --overwrite (overwrite=True) to replace it"
        )


def _check_free_space(out: Path, nbytes: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < nbytes:
        raise WordybirdError(
            f"not enough free disk space for {out}: the export needs {nbytes:,} bytes, "
            f"{out.parent} has {free:,} free"
        )


@contextlib.contextmanager
def _atomic_file(out: Path) -> Iterator[int]:
    """A file descriptor whose content appears at ``out`` only if the block completes.

    The data goes to a hidden ``.NAME.PID.RANDOM.tmp`` beside ``out`` (same file system, so
    the final rename is atomic), removed on any exception. A ``kill -9`` cannot clean up;
    the next export to the same name removes such leftovers of processes no longer alive.
    """
    _remove_stale_temporaries(out)
    temporary = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        raise WordybirdError(f"cannot write in {out.parent}: {exc}") from exc
    try:
        yield fd
        os.fsync(fd)
        os.replace(temporary, out)
        _fsync_folder(out.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files of earlier exports to ``out`` whose process has died."""
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = leftover.name[len(out.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable: a crash right after must not bring back the old entry."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
