"""Exported safetensors files read lazily, through the same interface as a Zarr store.

The header is parsed here (8 bytes of length, then JSON: see ``layout.decode_header``) and
each read is a positional read of exactly the bytes asked for, into a fresh buffer. Nothing
maps the file: ``safe_open`` maps the whole file privately and writable, which the kernel
refuses for a file larger than RAM + swap (a 26 GB WB2 export on a 24 GB machine), and
whose touched pages would count against the reader's memory. Opening costs the header,
``rec["embeddings"][5]`` one step's bytes, whatever the file's size.

The notebook's 0-d scalar tensors and the header's ``__metadata__`` (JSON-encoded by the
exporter) become :attr:`SafetensorsRecording.metadata`, so a recording's metadata looks the
same whichever form it was opened from.

A split export (``--steps-per-file``/``--max-file-size``) is a set of such files and an
index naming them: :class:`SplitSafetensorsRecording` reads them as one recording.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from wordybird.constants import STEPS_FIELD
from wordybird.errors import WordybirdError, no_field
from wordybird.export.layout import (
    FileLayout,
    LayoutError,
    TensorEntry,
    decode_header,
    read_index,
)
from wordybird.recording import Index, Recording


class SafetensorsRecording(Recording):
    """A recording exported as one ``.safetensors`` file (or any file in the notebook's layout).

    Per-step fields are the tensors whose first dimension is the number of recorded steps
    (other than ``recorded_steps``), in file order.
    """

    format = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115  (closed by close())
        except FileNotFoundError:
            raise WordybirdError(f"{self.path} does not exist") from None
        except OSError as exc:
            raise WordybirdError(f"cannot read {self.path}: {exc}") from exc
        self._lock = threading.Lock()  # seek + readinto pairs; the export reads on a thread
        try:
            self._layout = self._decode()
            self._steps = self._read_entry(self._entry(STEPS_FIELD)).astype(np.int64)
            self._metadata = self._read_metadata()
        except BaseException:
            self.close()
            raise
        n = len(self._steps)
        self._fields = tuple(
            name
            for name, entry in self._layout.entries.items()
            if name != STEPS_FIELD and entry.shape[:1] == (n,) and n > 0
        )

    def _decode(self) -> FileLayout:
        try:
            layout = decode_header(self._file, os.fstat(self._file.fileno()).st_size)
        except LayoutError as exc:
            raise WordybirdError(f"{self.path} is not a readable safetensors file: {exc}") from None
        steps = layout.entries.get(STEPS_FIELD)
        if steps is None:
            raise WordybirdError(
                f"{self.path} is a safetensors file but not a recording (no {STEPS_FIELD!r})"
            )
        if len(steps.shape) != 1 or steps.dtype != np.int64:
            raise WordybirdError(
                f"{self.path}: {STEPS_FIELD!r} must be a 1-d int64 tensor, it is "
                f"{steps.dtype} of shape {list(steps.shape)}"
            )
        return layout

    def _read_metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            key: _json_or_text(value) for key, value in self._layout.metadata.items()
        }
        for name, entry in self._layout.entries.items():
            if not entry.shape:
                metadata[name] = _python_number(self._read_entry(entry))
        return metadata

    @property
    def steps(self) -> np.ndarray:
        return self._steps

    @property
    def fields(self) -> tuple[str, ...]:
        return self._fields

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def step_shape(self, field: str) -> tuple[int, ...]:
        return self._entry(self._field(field)).shape[1:]

    def numpy_dtype(self, field: str) -> np.dtype:
        return self._entry(self._field(field)).dtype

    def nbytes_on_disk(self, field: str) -> int:
        """Bytes of ``field`` in the file (safetensors stores them uncompressed)."""
        return self._entry(self._field(field)).nbytes

    def read_numpy(self, field: str, index: Index) -> np.ndarray:
        entry = self._entry(self._field(field))
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self._steps))
            return self._read_entry(entry, start, max(start, stop))
        return self._read_entry(entry, index, index + 1)[0, ...]  # 0-d steps stay arrays

    def close(self) -> None:
        self._file.close()

    def _read_entry(
        self, entry: TensorEntry, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Rows ``start:stop`` of a tensor (the whole of a 0-d one), read from the file."""
        row_shape = entry.shape[1:]
        if entry.shape:
            stop = entry.shape[0] if stop is None else stop
            shape = (stop - start, *row_shape)
        else:
            shape = ()
        row_nbytes = math.prod(row_shape) * entry.dtype.itemsize
        out = np.empty(shape, dtype=entry.dtype)
        if out.size:  # read straight into the array's memory: no second copy
            offset = self._layout.data_start + entry.begin + start * row_nbytes
            self._read_into(memoryview(out.reshape(-1).view(np.uint8)), offset)
        return out

    def _read_into(self, view: memoryview, offset: int) -> None:
        with self._lock:
            self._file.seek(offset)
            while view:
                got = self._file.readinto(view)
                if not got:
                    raise WordybirdError(f"{self.path} ended early: was it truncated while open?")
                view = view[got:]

    def _entry(self, name: str) -> TensorEntry:
        return self._layout.entries[name]

    def _field(self, field: str) -> str:
        if field not in self._fields:
            raise no_field(self.path, field, self._fields)
        return field


class SplitSafetensorsRecording(Recording):
    """A split export read as one recording: its index and the files it lists, in order.

    Every file is a complete notebook-layout file for a consecutive range of steps; they
    must agree on fields, shapes and dtypes, and hold exactly the steps the index says.
    """

    format = "safetensors-split"

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.path = Path(index_path)
        try:
            index = read_index(self.path)
        except LayoutError as exc:
            raise WordybirdError(
                f"{self.path} is not a wordybird split-export index: {exc}"
            ) from None
        self._parts: list[SafetensorsRecording] = []
        try:
            for entry in index.files:
                part = SafetensorsRecording(self.path.parent / entry.name)
                self._parts.append(part)
                steps = part.steps
                if len(steps) != entry.count or (
                    len(steps) and (steps[0], steps[-1]) != (entry.first_step, entry.last_step)
                ):
                    raise WordybirdError(
                        f"{part.path} does not hold the {entry.count} step(s) "
                        f"{entry.first_step}..{entry.last_step} that {self.path} lists for it: "
                        "the files do not belong together"
                    )
                if part.fields != self._parts[0].fields or any(
                    (part.step_shape(f), part.numpy_dtype(f))
                    != (self._parts[0].step_shape(f), self._parts[0].numpy_dtype(f))
                    for f in part.fields
                ):
                    raise WordybirdError(
                        f"{part.path} has other fields, shapes or dtypes than {self._parts[0].path}"
                    )
        except BaseException:
            self.close()
            raise
        if not self._parts:
            raise WordybirdError(f"{self.path} lists no file")
        self._steps = np.concatenate([part.steps for part in self._parts])
        if np.any(np.diff(self._steps) <= 0):
            raise WordybirdError(f"the files of {self.path} are not in increasing step order")
        #: position where each part starts, and one past the last
        self._bounds = [int(b) for b in np.cumsum([0, *(len(part) for part in self._parts)])]

    @property
    def files(self) -> list[Path]:
        """The files of the export, in step order."""
        return [part.path for part in self._parts]

    def details(self) -> dict[str, Any]:
        return {"files": [str(path) for path in self.files]}

    @property
    def steps(self) -> np.ndarray:
        return self._steps

    @property
    def fields(self) -> tuple[str, ...]:
        return self._parts[0].fields

    @property
    def metadata(self) -> dict[str, Any]:
        return self._parts[0].metadata

    def step_shape(self, field: str) -> tuple[int, ...]:
        return self._parts[0].step_shape(field)

    def numpy_dtype(self, field: str) -> np.dtype:
        return self._parts[0].numpy_dtype(field)

    def nbytes_on_disk(self, field: str) -> int:
        return sum(part.nbytes_on_disk(field) for part in self._parts)

    def size_on_disk(self) -> int:
        return self.path.stat().st_size + sum(part.size_on_disk() for part in self._parts)

    def read_numpy(self, field: str, index: Index) -> np.ndarray:
        if not isinstance(index, slice):
            part = bisect.bisect_right(self._bounds, index) - 1
            return self._parts[part].read_numpy(field, index - self._bounds[part])
        start, stop, _ = index.indices(len(self._steps))
        pieces = [
            self._parts[part].read_numpy(
                field, slice(max(start, begin) - begin, min(stop, end) - begin)
            )
            for part, (begin, end) in enumerate(
                zip(self._bounds[:-1], self._bounds[1:], strict=True)
            )
            if max(start, begin) < min(stop, end)
        ]
        if not pieces:
            return self._parts[0].read_numpy(field, slice(0, 0))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def close(self) -> None:
        for part in self._parts:
            part.close()


def _json_or_text(value: str) -> Any:
    """The exporter JSON-encodes metadata values; other writers' plain strings stay strings."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _python_number(value: np.ndarray) -> int | float | bool:
    """A 0-d tensor as the Python number it was written from.

    A float32 scalar is read back through its shortest decimal form, so a learning rate
    exported from ``0.001`` reads as ``0.001`` (not 0.0010000000474974513) and compares
    equal to the Zarr store's metadata.
    """
    if value.dtype == np.float32:
        return float(str(value[()]))
    if value.dtype.kind in "iub":
        return value.item()
    return float(value.astype(np.float64))
