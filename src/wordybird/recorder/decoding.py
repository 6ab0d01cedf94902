"""Decoding a store's difference fields along their keyframe chains, and encoding a step.

A compact field's step is stored as its difference from the previous step; a predicted
field's as its difference from :func:`~wordybird.recorder.predict.predict`, fed with its
previous step and the same step's inputs (other fields, decoded through these same chains),
unless the previous position is not the previous step (a step between them was not
recorded): then, as in compact mode, from the previous step itself (FORMAT.md). The writer
encodes each step through the same :class:`Decoding`, so what it stores is exactly what a
reader will add back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from wordybird.errors import WordybirdError
from wordybird.recorder.delta import DeltaChains
from wordybird.recorder.layout import DIFFERENCE_ENCODINGS
from wordybird.recorder.predict import predict

if TYPE_CHECKING:
    from wordybird.recorder.format import RecordingStore


class Decoding:
    """The keyframe chains of one reader (or the writer) of a store.

    Args:
        store: the store whose fields it decodes.
        writer: the writer's chains: predictions run in the calling thread (the writer runs
            beside a training that keeps every core busy: predictions over two threads
            stalled its parallel regions on both cores at once) into a buffer kept per field
            (no allocation a step). A reader's spread over a few threads (it waits for
            them) into fresh arrays, so that its memory stays one decoded step a field.
    """

    def __init__(self, store: RecordingStore, *, writer: bool) -> None:
        self._store = store
        self._writer = writer
        self._chains = DeltaChains(store.keyframe_interval, store.read_stored, self._reference)
        #: (position, step number, values by field) of the step being encoded
        self._encoding: tuple[int, int, Mapping[str, np.ndarray]] | None = None
        #: the writer's: per predicted field, the buffer its predictions go to (used at
        #: once, then reused)
        self._predicted: dict[str, np.ndarray] = {}

    def read(self, name: str, index: int | slice) -> np.ndarray:
        """The values of ``name`` at committed positions ``index``."""
        spec = self._store.fields.get(name)
        if spec is None or spec.encoding not in DIFFERENCE_ENCODINGS:
            return self._store.read_stored(name, index)
        if isinstance(index, slice):
            positions = range(self._store.committed)[index]
            out = np.empty((len(positions), *spec.shape), dtype=spec.numpy_dtype)
            for row, position in enumerate(positions):
                out[row] = self._chains.decode(name, position).view(spec.numpy_dtype)
            return out
        return self._chains.decode(name, index).view(spec.numpy_dtype)

    def encode(
        self, position: int, step: int, values: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """A step's fields as stored at ``position``: raw fields as they are, difference
        fields as their differences. ``values`` (the whole step) are the inputs of its own
        predictions: the step is not stored yet."""
        self._encoding = (position, step, values)
        try:
            return {name: self._stored(position, name, value) for name, value in values.items()}
        finally:
            self._encoding = None

    def _stored(self, position: int, name: str, value: np.ndarray) -> np.ndarray:
        spec = self._store.fields[name]
        if spec.encoding not in DIFFERENCE_ENCODINGS:
            return value
        bits = np.ascontiguousarray(value).view(spec.stored_dtype)
        return self._chains.encode(name, position, bits)

    def _reference(self, name: str, position: int, previous: np.ndarray) -> np.ndarray:
        """What ``name`` at ``position`` is stored as a difference from (see the module)."""
        spec = self._store.fields[name]
        if spec.prediction is None:
            return previous
        step = self._step(position)
        if step != self._step(position - 1) + 1:
            return previous
        inputs = {
            role: self._value(name, source, position)
            for role, source in spec.prediction.inputs.items()
        }
        previous = previous.view(spec.numpy_dtype)
        out = None
        if self._writer:
            out = self._predicted.get(name)
            if out is None or out.shape != previous.shape:
                out = self._predicted[name] = np.empty_like(previous)
        values = predict(
            spec.prediction, previous, inputs, step, parallel=not self._writer, out=out
        )
        return values.view(spec.stored_dtype)

    def _step(self, position: int) -> int:
        if self._encoding is not None and position == self._encoding[0]:
            return self._encoding[1]
        return self._store.step_number(position)

    def _value(self, name: str, source: str, position: int) -> np.ndarray:
        if self._encoding is not None and position == self._encoding[0]:
            return self._encoding[2][source]
        if source not in self._store.fields:
            raise WordybirdError(
                f"{self._store.path}: field {name!r} is predicted from field {source!r}, which "
                "the recording does not hold: it cannot be decoded"
            )
        return self.read(source, position)
