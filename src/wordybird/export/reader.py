"""An exported safetensors file read lazily, through the same interface as a Zarr store.

``safe_open`` memory-maps the file and ``get_slice`` reads only the bytes asked for, so
opening a 2.6 GB export costs its header, and ``rec["embeddings"][5]`` one step's bytes.
The notebook's 0-d scalar tensors and the header's ``__metadata__`` (JSON-encoded by the
exporter) become :attr:`SafetensorsRecording.metadata`, so a recording's metadata looks the
same whichever form it was opened from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from wordybird.errors import WordybirdError
from wordybird.export.layout import torch_dtype
from wordybird.recorder.format import STEPS_FIELD
from wordybird.recorder.reader import Recording


class SafetensorsRecording(Recording):
    """A recording exported as one ``.safetensors`` file (or any file in the notebook's layout).

    Per-step fields are the tensors whose first dimension is the number of recorded steps
    (other than ``recorded_steps``), in file order.
    """

    format = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = safe_open(str(self.path), framework="pt")
        except FileNotFoundError:
            raise WordybirdError(f"{self.path} does not exist") from None
        except Exception as exc:  # safetensors raises its own error type for a bad header
            raise WordybirdError(f"{self.path} is not a readable safetensors file: {exc}") from exc
        names = self._file.offset_keys()
        if STEPS_FIELD not in names:
            raise WordybirdError(
                f"{self.path} is a safetensors file but not a recording (no {STEPS_FIELD!r})"
            )
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        for name in names:
            view = self._file.get_slice(name)
            self._shapes[name] = tuple(view.get_shape())
            try:
                self._dtypes[name] = torch_dtype(view.get_dtype())
            except ValueError as exc:
                raise WordybirdError(f"{self.path}: tensor {name!r}: {exc}") from None
        if len(self._shapes[STEPS_FIELD]) != 1 or self._dtypes[STEPS_FIELD] != torch.int64:
            raise WordybirdError(
                f"{self.path}: {STEPS_FIELD!r} must be a 1-d int64 tensor, it is "
                f"{self._dtypes[STEPS_FIELD]} of shape {list(self._shapes[STEPS_FIELD])}"
            )
        self._steps = self._file.get_tensor(STEPS_FIELD).numpy().astype(np.int64)
        n = len(self._steps)
        self._fields = tuple(
            name
            for name in names
            if name != STEPS_FIELD and self._shapes[name][:1] == (n,) and n > 0
        )
        self._metadata = self._read_metadata(names)

    def _read_metadata(self, names: list[str]) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            key: _json_or_text(value) for key, value in (self._file.metadata() or {}).items()
        }
        for name in names:
            if not self._shapes[name]:
                metadata[name] = _python_number(self._file.get_tensor(name))
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
        return self._shapes[self._field(field)][1:]

    def dtype(self, field: str) -> torch.dtype:
        return self._dtypes[self._field(field)]

    def nbytes_on_disk(self, field: str) -> int:
        """Bytes of ``field`` in the file (safetensors stores them uncompressed)."""
        return int(np.prod(self._shapes[self._field(field)])) * self.dtype(field).itemsize

    def read(self, field: str, index: int | slice) -> torch.Tensor:
        view = self._file.get_slice(self._field(field))
        if isinstance(index, slice):
            index = slice(index.start, min(index.stop, len(self._steps)))
        return view[index]

    def close(self) -> None:
        self._file.__exit__(None, None, None)

    def _field(self, field: str) -> str:
        if field not in self._fields:
            raise KeyError(f"{self.path} has no field {field!r}; it has {', '.join(self._fields)}")
        return field


def _json_or_text(value: str) -> Any:
    """The exporter JSON-encodes metadata values; other writers' plain strings stay strings."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _python_number(tensor: torch.Tensor) -> int | float | bool:
    """A 0-d tensor as the Python number it was written from.

    A float32 scalar is read back through its shortest decimal form, so a learning rate
    exported from ``0.001`` reads as ``0.001`` (not 0.0010000000474974513) and compares
    equal to the Zarr store's metadata.
    """
    if tensor.dtype == torch.float32:
        return float(str(tensor.numpy()[()]))
    if tensor.dtype.is_floating_point:
        return tensor.double().item()
    return tensor.item()
