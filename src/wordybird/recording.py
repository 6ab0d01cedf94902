"""The one reading interface: a :class:`Recording`, whatever holds it.

A recording looks the same whether it is a Zarr store, an exported safetensors file or a
split export: ``rec.steps``, ``rec.fields``, ``len(rec)``, ``rec.metadata``,
``rec[field][i]`` / ``rec[field][a:b]`` (torch tensors in the stored dtype),
``rec[field].numpy(i)`` (numpy arrays, bf16 as ``ml_dtypes.bfloat16``, without importing
torch), ``rec.at_step(step)`` and ``rec.to_xarray()`` (a lazy, Dask-backed
``xarray.Dataset``: ``xarray_adapter.py``). Nothing is read until indexed, and reading one step of a
field touches only that step's bytes.

Backends implement a handful of numpy-level methods; this module knows none of them, and
:func:`wordybird.opening.open` (``wordybird.open``) picks the backend for a path.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from wordybird import constants
from wordybird.dtypes import to_torch, torch_dtype_of
from wordybird.errors import no_field

if TYPE_CHECKING:
    import torch
    import xarray

#: Positions of a read: one position, or a unit-stride slice already within range.
Index = int | slice


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
        """The stored dtype, as torch names it."""
        return self._recording.dtype(self.name)

    @property
    def numpy_dtype(self) -> np.dtype:
        """The stored dtype, as numpy names it (bf16: ``ml_dtypes.bfloat16``)."""
        return self._recording.numpy_dtype(self.name)

    def __len__(self) -> int:
        return len(self._recording)

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        """Values at a position or a slice of positions, as a torch tensor."""
        return to_torch(self.numpy(index))

    def numpy(self, index: int | slice) -> np.ndarray:
        """Values at a position or a slice of positions, as a numpy array (no torch)."""
        n = len(self._recording)
        if isinstance(index, slice):
            start, stop, stride = index.indices(n)
            if stride != 1:  # one read per position: chunks hold one step each
                positions = range(start, stop, stride)
                if not positions:
                    return self.numpy(slice(0, 0))
                return np.stack([self.numpy(i) for i in positions])
            return self._recording.read_numpy(self.name, slice(start, max(start, stop)))
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            position = int(index) + n if index < 0 else int(index)
            if not 0 <= position < n:
                raise IndexError(
                    f"position {index} is out of range for field {self.name!r} "
                    f"with {n} recorded step(s)"
                )
            return self._recording.read_numpy(self.name, position)
        raise TypeError(f"index a field with an int or a slice, not {type(index).__name__}")

    def __repr__(self) -> str:
        return f"FieldView({self.name!r}, shape={self.shape}, dtype={self.numpy_dtype})"


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
    def numpy_dtype(self, field: str) -> np.dtype:
        """The stored dtype of ``field`` as a numpy dtype."""

    def step_nbytes(self, field: str) -> int:
        """Bytes of one step of ``field``."""
        return constants.step_nbytes(self.step_shape(field), self.numpy_dtype(field))

    @abstractmethod
    def read_numpy(self, field: str, index: Index) -> np.ndarray:
        """Values of ``field`` at a position or a (unit-stride, in-range) slice of positions."""

    @abstractmethod
    def nbytes_on_disk(self, field: str) -> int:
        """Bytes ``field`` takes on disk (compressed in a store, raw in an export)."""

    def close(self) -> None:  # noqa: B027  (only file-backed forms hold a resource)
        """Release any open file."""

    def field_prediction(self, field: str) -> dict[str, Any] | None:
        """How the recording itself predicts ``field``'s steps (a predictive store's header
        entry, as JSON: ``Prediction.to_json()``), or None: only predictive stores hold one;
        other recordings may say it in their metadata's ``predictions``."""
        return None

    def forget_decoded(self) -> None:  # noqa: B027  (only difference-encoded stores keep any)
        """Drop what the reader keeps between reads to decode the next step of a field (a
        compact or predictive store's last decoded step of each field read): a reader
        moving on to other fields frees that memory; a later read decodes from a keyframe."""

    # -- parallel reads (Dask workers, ``to_xarray``) ---------------------------------------

    def block_length(self, field: str) -> int:
        """Positions per block of a parallel read (one Dask chunk along ``step``).

        Block ``k`` is positions ``[k·n, (k+1)·n)``, read at once by :meth:`read_block`. One
        step for big fields, as many as a store's small-field chunk holds for fields of at
        most ``SMALL_STEP_BYTES`` a step (``constants.py``); a store follows its chunks (and
        compact mode's keyframe runs).
        """
        if self.step_nbytes(field) > constants.SMALL_STEP_BYTES:
            return 1
        return constants.SMALL_FIELD_STEPS_PER_CHUNK

    def read_block(self, field: str, start: int, stop: int) -> np.ndarray:
        """Positions ``[start, stop)`` of ``field`` (within ``len(self)``), safe to call
        from several threads at once: no decoding state is shared between calls."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(
                f"positions {start}..{stop} are outside the {len(self)} recorded step(s) "
                f"of {self.path}"
            )
        return self.read_numpy(field, slice(start, stop))

    def reopener(self) -> Callable[[], Recording]:
        """How another process (a Dask worker) opens this same recording: a picklable
        callable without arguments. A backend that needs more than its path to open (a
        remote store's options) returns a callable that carries them."""
        return functools.partial(type(self), self.path)

    def to_xarray(self, *, token_field: str | None = None) -> xarray.Dataset:
        """The recording as an ``xarray.Dataset`` of Dask arrays, read only when computed.

        One variable per field, first dimension ``step`` (the step numbers are its
        coordinate); ``token``/``dim`` for the axes of the embedding matrix, ``<name>_dim<i>``
        for other axes (``xarray_adapter.py`` states the rule; ``token_field`` names the
        [vocab, dim] field when the recording has no ``embeddings``). A Dask chunk is one step
        of a big field, a compact recording's keyframe run, or many steps of a small field. Runs on
        any Dask scheduler, a ``distributed`` cluster's processes included. Needs
        ``pip install 'wordybird[xarray]'``.
        """
        from wordybird.xarray_adapter import to_xarray

        return to_xarray(self, token_field=token_field)

    def dtype(self, field: str) -> torch.dtype:
        """The stored dtype of ``field`` as a torch dtype."""
        return torch_dtype_of(self.numpy_dtype(field))

    def read(self, field: str, index: Index) -> torch.Tensor:
        """:meth:`read_numpy` as a torch tensor."""
        return to_torch(self.read_numpy(field, index))

    def details(self) -> dict[str, Any]:
        """Facts particular to this form of recording, for ``wordybird inspect``."""
        return {}

    def size_on_disk(self) -> int:
        """Bytes the recording takes on disk (every file or object of a store)."""
        return self.path.stat().st_size

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, field: str) -> FieldView:
        if field not in self.fields:
            raise no_field(self.path, field, self.fields)
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
