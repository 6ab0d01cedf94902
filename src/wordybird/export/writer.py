"""Streaming export of a recording to one safetensors file, never holding it in memory.

The safetensors library only writes files from tensors in RAM (the notebook's scheme: every
step held, then stacked into a second copy: three times the data at its peak). Its format is
simple enough to write ourselves: the header first (every shape is known from the
recording), then each tensor's bytes at their place in the file, read from the store a block
at a time. A reader thread decodes the next blocks while the main thread writes, so the
export runs at close to the disk's speed with a few blocks of memory.

Small fields are read a field at a time, in blocks of many steps. Big fields (a chunk per
step in a store) are read a step at a time, every big field of one step before the next
step: a predictive store decodes a step's parameter from the same step's gradient and
optimizer state, so reading them together decodes each field's step once, where a field
after field order would decode the gradient and moments again for every field predicted
from them (measured: benchmarks/bench_predictive.py).

Every file appears under its name only when complete (``wordybird.atomic``). A split
export writes its files one by one and its index last.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from wordybird import opening
from wordybird.atomic import atomic_file
from wordybird.constants import SMALL_STEP_BYTES, STEPS_FIELD
from wordybird.errors import DamagedRecordingError, WordybirdError, no_folder
from wordybird.export.layout import (
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
from wordybird.export.select import (
    StepRange,
    parse_size,
    readable_positions,
    select_fields,
    select_positions,
    split_metadata,
)
from wordybird.knobs import EXPORT_BLOCK_BYTES, EXPORT_READ_AHEAD
from wordybird.recording import Recording


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
    skip_damaged: bool = False,
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
        skip_damaged: check a Zarr recording first (``wordybird check``) and leave out the
            steps that cannot be read, listing them in the file's metadata as
            ``skipped_damaged_steps``. Without it, a damaged step stops the export.

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
    rec = opening.open(recording_or_path) if owned else recording_or_path
    try:
        positions: Sequence[int] = select_positions(rec, steps)
        chosen = select_fields(rec, fields)
        scalars, provenance = split_metadata(rec.metadata, [STEPS_FIELD, *chosen])
        if skip_damaged:
            positions, skipped = readable_positions(rec, positions, chosen)
            provenance["skipped_damaged_steps"] = json.dumps(skipped)
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
        parts = [full.part(positions[a : a + per_file]) for a in range(0, len(positions), per_file)]
        return _write_split(out, parts, overwrite, progress)
    finally:
        if owned:
            rec.close()


class _FilePlan:
    """One export file: the steps and fields it holds, its header, and how to write it."""

    def __init__(
        self,
        rec: Recording,
        positions: Sequence[int],
        chosen: list[str],
        scalars: dict[str, np.ndarray],
        provenance: dict[str, str],
    ) -> None:
        self.rec, self.positions, self.chosen = rec, positions, chosen
        self.scalars, self.provenance = scalars, provenance
        recorded = rec.steps[np.asarray(positions, dtype=np.int64)]
        self.tensors = {STEPS_FIELD: np.ascontiguousarray(recorded), **scalars}
        entries = [
            *(TensorEntry(name, v.dtype, tuple(v.shape)) for name, v in self.tensors.items()),
            *(
                TensorEntry(name, rec.numpy_dtype(name), (len(positions), *rec.step_shape(name)))
                for name in chosen
            ),
        ]
        self.placed = plan(entries)
        self.header = encode_header(self.placed, provenance)
        self.size = len(self.header) + self.placed[-1].end
        self.first_step, self.last_step = int(recorded[0]), int(recorded[-1])

    def part(self, positions: Sequence[int]) -> _FilePlan:
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
        with atomic_file(out) as fd:
            written = _write(fd, 0, memoryview(self.header), progress)
            try:
                for offset, block in _read_ahead(self._reads()):
                    written += _write(fd, len(self.header) + offset, _bytes_of(block), progress)
            except DamagedRecordingError as exc:
                raise DamagedRecordingError(
                    f"{exc}; `wordybird check` lists the damage, and export --skip-damaged "
                    "(skip_damaged=True) exports the steps that still read"
                ) from exc
            if written != self.size:  # never leave a file its header belies
                raise WordybirdError(
                    f"{self.rec.path} gave {written:,} bytes for {out}, its header announced "
                    f"{self.size:,}"
                )

    def _reads(self) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
        """Every read that fills the data section, with its offset there: the tensors at
        hand, the small fields in blocks, then the big fields step after step (see the
        module's docstring)."""
        big = []  # (entry, bytes of one step)
        for entry in self.placed:
            if entry.name in self.tensors:
                yield entry.begin, partial(self.tensors.__getitem__, entry.name)
            elif (step_nbytes := self.rec.step_nbytes(entry.name)) > SMALL_STEP_BYTES:
                big.append((entry, step_nbytes))
            else:
                yield from _blocks(self.rec, entry, self.positions)
        for row, position in enumerate(self.positions):
            for entry, step_nbytes in big:
                read = partial(self.rec.read_numpy, entry.name, slice(position, position + 1))
                yield entry.begin + row * step_nbytes, read


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
    with atomic_file(index) as fd:
        _write(fd, 0, memoryview(encode_index(SplitIndex(entries, parts[0].chosen))), None)
    for path in replaced:
        path.unlink(missing_ok=True)
    return index


def _listed_files(index: Path) -> set[Path]:
    """The files an existing index names (none if it is not a readable index)."""
    try:
        return {index.parent / entry.name for entry in read_index(index).files}
    except (LayoutError, OSError):
        return set()


def _blocks(
    rec: Recording, entry: TensorEntry, positions: Sequence[int]
) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
    """Reads of a field over ``positions`` in blocks of at most EXPORT_BLOCK_BYTES (one step min),
    each a slice of consecutive positions, with its offset in the data section."""
    step_nbytes = rec.step_nbytes(entry.name)
    per_block = max(1, EXPORT_BLOCK_BYTES // max(1, step_nbytes))
    for _, run in itertools.groupby(enumerate(positions), key=lambda item: item[1] - item[0]):
        consecutive = list(run)  # (row in the file, position) pairs
        for start in range(0, len(consecutive), per_block):
            block = consecutive[start : start + per_block]
            (row, first), last = block[0], block[-1][1]
            read = partial(rec.read_numpy, entry.name, slice(first, last + 1))
            yield entry.begin + row * step_nbytes, read


def _read_ahead(
    reads: Iterator[tuple[int, Callable[[], np.ndarray]]],
) -> Iterator[tuple[int, np.ndarray]]:
    """Run the reads, in order, on one worker thread, EXPORT_READ_AHEAD blocks ahead of the
    consumer (one thread: a store's decoding chains follow one sequence of reads)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wordybird-export") as pool:
        pending: deque[tuple[int, Future[np.ndarray]]] = deque()
        try:
            for offset, read in reads:
                pending.append((offset, pool.submit(read)))
                if len(pending) > EXPORT_READ_AHEAD:
                    offset, future = pending.popleft()
                    yield offset, future.result()
            while pending:
                offset, future = pending.popleft()
                yield offset, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _bytes_of(array: np.ndarray) -> memoryview:
    """An array's bytes in row-major order, little-endian as safetensors wants them."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(array.reshape(-1).view(np.uint8))


def _write(fd: int, offset: int, data: memoryview, progress: Callable[[int], None] | None) -> int:
    """Write ``data`` at ``offset`` of the file; the number of bytes written."""
    total = len(data)
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
        if progress is not None:
            progress(written)
    return total


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
