"""Lazy, per-step reading of a recording: the :class:`Recording` interface and its Zarr form.

A :class:`Recording` looks the same whether it is a Zarr store or an exported safetensors
file: ``rec.steps``, ``rec.fields``, ``len(rec)``, ``rec[field][i]`` / ``rec[field][a:b]``
(torch tensors in the stored dtype), ``rec.at_step(step)`` and ``rec.metadata``. Nothing is
read until indexed, and reading one step of a field touches only that step's chunks.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from wordybird.errors import WordybirdError
from wordybird.recorder.bf16 import numpy_to_torch, torch_dtype_of
from wordybird.recorder.format import FieldSpec, RecordingStore


class FieldView:
    """One field of a recording, indexable by position without loading the rest."""

    def __init__(self, recording: Recording, name: str) -> None:
        self._recording = recording
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        """(steps, *one step's shape)."""
        return (len(self._recording), *self._recording.step_shape(self.name))

    @property
    def dtype(self) -> torch.dtype:
        return self._recording.dtype(self.name)

    def __len__(self) -> int:
        return len(self._recording)

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        n = len(self._recording)
        if isinstance(index, slice):
            start, stop, stride = index.indices(n)
            if stride != 1:  # one read per position: chunks hold one step each
                positions = range(start, stop, stride)
                return torch.stack([self[i] for i in positions]) if positions else self[0:0]
            return self._recording.read(self.name, slice(start, max(start, stop)))
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            position = int(index) + n if index < 0 else int(index)
            if not 0 <= position < n:
                raise IndexError(
                    f"position {index} is out of range for field {self.name!r} "
                    f"with {n} recorded step(s)"
                )
            return self._recording.read(self.name, position)
        raise TypeError(f"index a field with an int or a slice, not {type(index).__name__}")

    def __repr__(self) -> str:
        return f"FieldView({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class Recording(ABC):
    """A recorded run, read lazily one step at a time. Open one with ``wordybird.open``."""

    path: Path
    format: str

    @property
    @abstractmethod
    def steps(self) -> np.ndarray:
        """The recorded step numbers (int64, strictly increasing), one per position."""

    @property
    @abstractmethod
    def fields(self) -> tuple[str, ...]:
        """The per-step fields, in recording order (``recorded_steps`` is :attr:`steps`)."""

    @property
    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """Run metadata: hyperparameters, provenance, the notebook's scalars."""

    @abstractmethod
    def step_shape(self, field: str) -> tuple[int, ...]:
        """One step's shape for ``field``."""

    @abstractmethod
    def dtype(self, field: str) -> torch.dtype:
        """The stored dtype of ``field``."""

    @abstractmethod
    def read(self, field: str, index: int | slice) -> torch.Tensor:
        """Values of ``field`` at a position or a (unit-stride, in-range) slice of positions."""

    def close(self) -> None:  # noqa: B027  (only file-backed forms hold a resource)
        """Release any open file."""

    def size_on_disk(self) -> int:
        """Bytes the recording takes on disk (every file of a store)."""
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, field: str) -> FieldView:
        if field not in self.fields:
            raise KeyError(f"{self.path} has no field {field!r}; it has {', '.join(self.fields)}")
        return FieldView(self, field)

    def __contains__(self, field: object) -> bool:
        return field in self.fields

    def index_of(self, step: int) -> int:
        """The position of a recorded step number."""
        steps = self.steps
        position = int(np.searchsorted(steps, step))
        if position >= len(steps) or steps[position] != step:
            span = f"{steps[0]}..{steps[-1]}" if len(steps) else "none"
            raise KeyError(f"step {step} is not recorded in {self.path} (recorded: {span})")
        return position

    def at_step(self, step: int) -> dict[str, torch.Tensor]:
        """Every field's tensor at one recorded step number."""
        position = self.index_of(step)
        return {field: self.read(field, position) for field in self.fields}

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        steps = self.steps
        span = f"steps {steps[0]}..{steps[-1]}" if len(steps) else "no steps"
        return (
            f"{type(self).__name__}({str(self.path)!r}, {len(steps)} recorded, {span}, "
            f"fields={list(self.fields)})"
        )


class ZarrRecording(Recording):
    """A recording in a wordybird Zarr store; shows only committed steps.

    A store being written keeps growing: :meth:`refresh` picks up steps committed since the
    recording was opened (and steps re-recorded after a truncation).
    """

    format = "zarr"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the store to see steps committed since it was opened.

        The store is opened anew: nothing read before (array shapes, compact mode's last
        decoded step) survives, since a writer may have truncated and re-recorded since.
        """
        store = RecordingStore.open(self.path, read_only=True)
        while not store.open_arrays():
            # a truncation shrank an array after the header was read: read the header again
            # (if it has not changed, the store is damaged instead, which reads report)
            again = RecordingStore.open(self.path, read_only=True)
            if again.committed == store.committed:
                break
            store = again
        self._store = store
        self._steps = store.steps()

    @property
    def steps(self) -> np.ndarray:
        return self._steps

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self._store.fields)

    @property
    def metadata(self) -> dict[str, Any]:
        return self._store.metadata

    @property
    def mode(self) -> str:
        """ "default" (any Zarr v3 reader decodes it) or "compact" (deltas between steps)."""
        return self._store.mode

    @property
    def uncommitted(self) -> int:
        """Positions written past the last commit (a step in flight, or a crash's leftover)."""
        return self._store.uncommitted

    def step_shape(self, field: str) -> tuple[int, ...]:
        return self._spec(field).shape

    def dtype(self, field: str) -> torch.dtype:
        return torch_dtype_of(self._spec(field).numpy_dtype)

    def nbytes_on_disk(self, field: str) -> int:
        """Compressed bytes of ``field`` in the store."""
        self._spec(field)
        return self._store.stored_nbytes(field)

    def read(self, field: str, index: int | slice) -> torch.Tensor:
        self._spec(field)
        if isinstance(index, slice):  # open or past-the-end bounds: within the committed
            index = slice(*index.indices(len(self._steps)))
        values = np.asarray(self._store.read(field, index))  # keeps 0-d steps 0-d
        if not (values.flags.c_contiguous and values.flags.writeable):
            values = values.copy()
        return numpy_to_torch(values)

    def _spec(self, field: str) -> FieldSpec:
        try:
            return self._store.fields[field]
        except KeyError:
            raise KeyError(
                f"{self.path} has no field {field!r}; it has {', '.join(self.fields)}"
            ) from None


def open_recording(path: str | os.PathLike[str]) -> Recording:
    """Open a Zarr recording folder, an exported ``.safetensors`` file or a split export.

    A split export opens from its index (``OUT.safetensors.index.json``) or from the name it
    was exported to (``OUT.safetensors``), when no single file has that name.
    """
    p = Path(path)
    if p.is_dir():
        return ZarrRecording(p)
    from wordybird.export.layout import INDEX_SUFFIX, index_path
    from wordybird.export.reader import SafetensorsRecording, SplitSafetensorsRecording

    if p.is_file():
        if p.name.endswith(INDEX_SUFFIX):
            return SplitSafetensorsRecording(p)
        return SafetensorsRecording(p)
    if index_path(p).is_file():
        return SplitSafetensorsRecording(index_path(p))
    if not p.exists():
        raise WordybirdError(f"{p} does not exist")
    raise WordybirdError(f"{p} is neither a recording folder nor a safetensors file")
