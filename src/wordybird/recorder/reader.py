"""A recording in a wordybird Zarr store, read lazily through the :class:`Recording` interface."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wordybird.errors import DamagedRecordingError, no_field
from wordybird.recorder.check import Damage, find_damage
from wordybird.recorder.delta import decode_run
from wordybird.recorder.format import RecordingStore
from wordybird.recorder.layout import DIFFERENCE_ENCODINGS, FieldSpec
from wordybird.recording import Index, Recording
from wordybird.storage import Location


class ZarrRecording(Recording):
    """A recording in a wordybird Zarr store; shows only committed steps.

    A store being written keeps growing: :meth:`refresh` picks up steps committed since the
    recording was opened (and steps re-recorded after a truncation).
    """

    format = "zarr"

    def __init__(
        self,
        path: str | os.PathLike[str] | Location,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        self._where = Location.of(path, storage_options)
        self.refresh()
        #: the recording's folder (a Path), or its s3:// URL (in a run folder: the
        #: recording.zarr inside it)
        self.path: Path | str = self._where.local or self._where.text

    def refresh(self) -> None:
        """Re-read the store to see steps committed since it was opened.

        The store is opened anew: nothing read before (array shapes, compact mode's last
        decoded step) survives, since a writer may have truncated and re-recorded since.
        """
        store = RecordingStore.open(self._where, read_only=True)
        while not store.open_arrays():
            # a truncation shrank an array after the header was read: read the header again
            # (if it has not changed, the store is damaged instead, which reads report)
            again = RecordingStore.open(self._where, read_only=True)
            if again.committed == store.committed:
                break
            store = again
        self._store = store
        self._where = store.path  # a run folder's recording, once found
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
        """ "default" (any Zarr v3 reader decodes it), "compact" (deltas between steps) or
        "predictive" (differences from the optimizer's update rule)."""
        return self._store.mode

    @property
    def uncommitted(self) -> int:
        """Positions written past the last commit (a step in flight, or a crash's leftover)."""
        return self._store.uncommitted

    def details(self) -> dict[str, Any]:
        return {"mode": self.mode, "committed": len(self._steps), "uncommitted": self.uncommitted}

    def step_shape(self, field: str) -> tuple[int, ...]:
        return self._spec(field).shape

    def numpy_dtype(self, field: str) -> np.dtype:
        return self._spec(field).numpy_dtype

    def nbytes_on_disk(self, field: str) -> int:
        """Compressed bytes of ``field`` in the store."""
        self._spec(field)
        return self._store.stored_nbytes(field)

    def reopener(self) -> Callable[[], ZarrRecording]:
        # the storage options travel too: an s3:// recording reopens in a Dask worker
        return functools.partial(ZarrRecording, self._where.text, dict(self._where.options))

    def damage(self) -> list[Damage]:
        """Every unreadable (field, positions) range of the committed steps (reads, and so
        checksums, every chunk: see ``wordybird check``)."""
        return find_damage(RecordingStore.open(self._where, read_only=True))

    def size_on_disk(self) -> int:
        return self._store.stored_nbytes()

    def field_prediction(self, field: str) -> dict[str, Any] | None:
        prediction = self._spec(field).prediction
        return None if prediction is None else prediction.to_json()

    def forget_decoded(self) -> None:
        self._store.forget_decoded()

    def read_numpy(self, field: str, index: Index) -> np.ndarray:
        self._spec(field)
        if isinstance(index, slice):  # open or past-the-end bounds: within the committed
            index = slice(*index.indices(len(self._steps)))
        values = np.asarray(self._store.read(field, index))  # keeps 0-d steps 0-d
        if not (values.flags.c_contiguous and values.flags.writeable):
            values = values.copy()  # torch.from_numpy needs memory it may own and write
        return values

    def block_length(self, field: str) -> int:
        """The store's chunk along the step axis (one step for big fields, 1024 for small
        ones); for a difference field (compact, predictive) the keyframe interval, so that
        each block decodes one keyframe run, and every step once."""
        if self._spec(field).encoding in DIFFERENCE_ENCODINGS:
            return self._store.keyframe_interval
        return self._store.chunk_rows(field)

    def read_block(self, field: str, start: int, stop: int) -> np.ndarray:
        """Positions ``[start, stop)``; a delta field is decoded from the keyframe at or before
        ``start`` in one pass, without the store's shared one-step cache (which concurrent
        readers of different runs would keep evicting); a predicted field step after step,
        with chains of its own for it and its inputs."""
        spec = self._spec(field)
        if spec.encoding == "predicted" and 0 <= start < stop <= len(self._steps):
            return self._store.read_apart(field, start, stop)
        if spec.encoding != "delta" or not 0 <= start < stop <= len(self._steps):
            return super().read_block(field, start, stop)
        keyframe = start - start % self._store.keyframe_interval
        try:
            stored = np.asarray(self._store.read_stored(field, slice(keyframe, stop)))
        except DamagedRecordingError:
            for position in range(keyframe, stop):  # name the damaged step, not the run
                self._store.read_stored(field, position)
            raise
        return decode_run(stored)[start - keyframe :].view(spec.numpy_dtype)

    def _spec(self, field: str) -> FieldSpec:
        try:
            return self._store.fields[field]
        except KeyError:
            raise no_field(self.path, field, self.fields) from None
