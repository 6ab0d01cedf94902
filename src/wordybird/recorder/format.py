"""The recording's store: what a recording is on disk, and reading it (FORMAT.md).

A recording is one Zarr v3 group. Every field is an array whose first axis is the recorded
step's position; ``recorded_steps`` holds the step numbers. The group's attributes hold a
header (``attrs["wordybird"]``) with the format version, the field layout and ``committed``,
the number of leading positions whose data is completely written. The header is rewritten
(atomically, as every file is: ``wordybird.storage``) only after all of a step's chunks are
on disk, and it is the only truth: a process killed at any moment leaves a store whose
first ``committed`` positions are exact; positions past them, and arrays the header does
not name, are ignored by readers and removed on resume (FORMAT.md, "Commit protocol").

The reader (``reader.py``) reaches the disk only through :class:`RecordingStore`, the
writer (``writer.py``) through its writable subclass in ``commit.py``, which holds the
commit protocol; the layout they apply is ``layout.py``'s, the difference fields' chains
``decoding.py``'s, and their file access ``wordybird.storage``'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous as zasync
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import wordybird.recorder.bf16  # noqa: F401  (registers the Zarr bfloat16 type)
from wordybird.constants import MODES, STEPS_FIELD, Mode
from wordybird.errors import DamagedRecordingError, RecordingNotFoundError, WordybirdError
from wordybird.recorder.decoding import Decoding
from wordybird.recorder.layout import FieldSpec
from wordybird.storage import (
    RUN_RECORDING,
    Location,
    RecordingDisk,
    any_key,
    missing_keys,
    open_store,
)

FORMAT_NAME = "wordybird.recording"
#: default and compact stores; unchanged since the first release.
FORMAT_VERSION = 1
#: predictive stores: a reader of version 1 alone would misread their fields, so it refuses.
PREDICTIVE_FORMAT_VERSION = 2
FORMAT_VERSIONS = (FORMAT_VERSION, PREDICTIVE_FORMAT_VERSION)


def format_version(mode: Mode) -> int:
    """The format version a new store of ``mode`` is written in."""
    return PREDICTIVE_FORMAT_VERSION if mode == "predictive" else FORMAT_VERSION


class RecordingStore:
    """A recording on disk, opened to read: its header, its fields, its committed steps.

    Reading is safe from any thread while a writer appends, because readers look only at
    committed positions. Writing is :class:`~wordybird.recorder.commit.WritableStore`'s.
    """

    def __init__(
        self,
        path: Location,
        group: zarr.AsyncGroup,
        disk: RecordingDisk,
        header: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        self.path = path  # where it lives; its str() is the path or URL, for messages
        self._group = group
        self._disk = disk
        self._header = header
        self._metadata = metadata
        self._arrays: dict[str, zarr.AsyncArray] = {}
        self._step_numbers = np.zeros(0, dtype=np.int64)  # known so far, for predictions
        self.fields: dict[str, FieldSpec] = {
            name: FieldSpec.from_json(name, data) for name, data in header["fields"].items()
        }
        self._decoding = self._new_decoding()

    def _new_decoding(self) -> Decoding:
        """The chains of this store's reads: a reader waits for its predictions, so they
        spread over a few threads."""
        return Decoding(self, writer=False)

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        where: str | os.PathLike[str] | Location,
        *,
        read_only: bool = True,
        durable: bool = False,
        storage_options: Mapping[str, str] | None = None,
    ) -> RecordingStore:
        """Open an existing recording (a folder or an ``s3://`` URL), or the one a run folder
        holds (``recording.zarr``, as ``wordybird train`` leaves it); clear errors for
        anything that is not one."""
        path = Location.of(where, storage_options)
        if path.local is not None and not path.local.exists():
            raise RecordingNotFoundError(f"{path} does not exist")
        disk = open_store(path, read_only=read_only, durable=durable)
        if not _exists(path, disk, "zarr.json"):
            if _exists(path, disk, f"{RUN_RECORDING}/zarr.json"):  # a run folder: its recording
                return cls.open(path.child(RUN_RECORDING), read_only=read_only, durable=durable)
            if path.local is None and not sync(any_key(disk, "")):
                raise RecordingNotFoundError(f"{path} does not exist")
            raise WordybirdError(
                f"{path} is not a wordybird recording (no zarr.json), nor a run folder "
                f"holding one ({RUN_RECORDING})"
            )
        try:
            group = sync(
                zasync.open_group(store=disk, mode="r" if read_only else "r+", zarr_format=3)
            )
        except Exception as exc:
            raise WordybirdError(f"{path} is not a readable Zarr v3 group: {exc}") from exc
        attrs = dict(group.attrs)
        header = attrs.get("wordybird")
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise WordybirdError(f"{path} is a Zarr group but not a wordybird recording")
        version = header.get("format_version")
        if version not in FORMAT_VERSIONS:
            raise WordybirdError(
                f"{path} uses recording format version {version}; this wordybird reads "
                f"versions {FORMAT_VERSION} and {PREDICTIVE_FORMAT_VERSION} (upgrade wordybird "
                "to read it)"
            )
        mode = header.get("mode")
        if mode not in MODES or version != format_version(mode):
            raise WordybirdError(
                f"{path}: its header is damaged: format version {version} holds no "
                f"{mode!r} mode recording"
            )
        metadata = dict(attrs.get("metadata") or {})
        return cls(path, group, disk, dict(header), metadata)

    # -- header ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._header["mode"]

    @property
    def keyframe_interval(self) -> int:
        return int(self._header["keyframe_interval"])

    @property
    def committed(self) -> int:
        """Positions [0, committed) are completely written (as the header on disk says)."""
        return int(self._header["committed"])

    @property
    def uncommitted(self) -> int:
        """Positions past ``committed`` that arrays already hold (a step in flight, or the
        leftover of a writer killed mid-step)."""
        if not self.fields:
            return 0
        return max(0, self._array(STEPS_FIELD).shape[0] - self.committed)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def _array(self, name: str) -> zarr.AsyncArray:
        if name not in self._arrays:
            try:
                array = sync(self._group.getitem(name))
            except (ValueError, KeyError, TypeError, OSError) as exc:  # JSON, zarr, I/O errors
                raise DamagedRecordingError(
                    f"{self.path}: field {name!r} cannot be opened (its array metadata is "
                    f"damaged or missing): {exc!r}"
                ) from exc
            self._arrays[name] = array
        return self._arrays[name]

    def stored_length(self, name: str) -> int:
        """Positions the array holds on disk now (``committed`` or more while a step is in
        flight; fewer only in a damaged recording)."""
        return self._array(name).shape[0]

    def chunk_rows(self, name: str) -> int:
        """Positions per chunk of an array (1 for big fields, many for small ones)."""
        return self._array(name).metadata.chunk_grid.chunk_shape[0]

    def open_arrays(self) -> bool:
        """Open every named array now, for a reader; whether each holds the committed positions.

        An opened array keeps the length it was opened with, so the positions below
        ``committed`` stay readable (as old or re-recorded steps) even when a truncation
        shrinks the arrays on disk later; opened lazily, one could already be shorter. An
        array shorter now was shrunk by a truncation since the header was read.
        """
        names = [STEPS_FIELD, *self.fields] if self.fields else []
        held = True
        for name in names:
            try:
                held = held and self._array(name).shape[0] >= self.committed
            except DamagedRecordingError:
                continue  # broken array metadata: reported when the field is read
        return held

    def steps(self) -> np.ndarray:
        """The step numbers of the committed positions."""
        if not self.committed:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.read_stored(STEPS_FIELD, slice(0, self.committed)), dtype=np.int64)

    def read(self, name: str, index: int | slice) -> np.ndarray:
        """The values at positions ``index`` (an int within the committed range, or a slice)."""
        return self._decoding.read(name, index)

    def read_apart(self, name: str, start: int, stop: int) -> np.ndarray:
        """Positions ``[start, stop)`` decoded with chains of their own, shared with no other
        read: safe beside concurrent reads (Dask's threads), at the cost of decoding from
        the keyframe at or before ``start``."""
        return self._new_decoding().read(name, slice(start, stop))

    def forget_decoded(self) -> None:
        """Drop every decoded step kept for the chains (after a truncation: they may be gone)."""
        self._decoding = self._new_decoding()
        self._step_numbers = np.zeros(0, dtype=np.int64)

    def step_number(self, position: int) -> int:
        """The step number recorded at a committed ``position`` (kept once read)."""
        if position >= len(self._step_numbers):
            self._step_numbers = self.steps()
        return int(self._step_numbers[position])

    def read_stored(self, name: str, index: int | slice) -> np.ndarray:
        """One array's stored values; a chunk that cannot be read (damaged: its checksum
        fails) is reported with its field and step instead of zarr's bare codec error."""
        array = self._array(name)
        positions = range(array.shape[0])[index]
        if isinstance(positions, int):
            positions = range(positions, positions + 1)
        try:
            with missing_keys() as missing:
                values = sync(array.getitem(index))
            if missing:
                raise FileNotFoundError(f"chunk {sorted(missing)[0]} is missing")
            return values
        except (ValueError, RuntimeError, OSError) as exc:  # checksum, codec, I/O errors
            if positions and positions[-1] >= self._committed_on_disk():
                raise WordybirdError(
                    f"{self.path}: field {name!r} at position {positions[-1]} was removed by "
                    "a truncation after this reader opened the recording; refresh() it"
                ) from exc
            raise DamagedRecordingError(
                f"{self.path}: field {name!r} at {self._where(name, index)} cannot be read "
                f"(the recording is damaged there): {exc}"
            ) from exc

    def _committed_on_disk(self) -> int:
        """``committed`` as the header on disk says now (a reader's copy may be older)."""
        try:
            found = sync(self._disk.get("zarr.json", default_buffer_prototype()))
            header = json.loads(found.to_bytes())
            return int(header["attributes"]["wordybird"]["committed"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return self.committed

    def _where(self, name: str, index: int | slice) -> str:
        """Positions ``index`` in words, with their step numbers when those can be read."""
        if isinstance(index, slice):
            positions = range(self.committed)[index]
        else:
            positions = range(index, index + 1)
        first, last = positions[0], positions[-1]
        where = f"position {first}" if first == last else f"positions {first}..{last}"
        if name == STEPS_FIELD:
            return where
        try:
            steps = self.read_stored(STEPS_FIELD, slice(first, last + 1))
        except WordybirdError:
            return where
        span = f"step {steps[0]}" if first == last else f"steps {steps[0]}..{steps[-1]}"
        return f"{span} ({where})"

    def stored_nbytes(self, name: str = "") -> int:
        """Bytes the field's array takes on disk (chunks and metadata); with no name, the
        whole recording's."""
        return sync(self._disk.getsize_prefix(f"{name}/" if name else ""))


def is_recording(
    where: str | os.PathLike[str] | Location, options: Mapping[str, str] | None = None
) -> bool:
    """True when ``where`` (a folder or an ``s3://`` URL) holds a wordybird recording's
    group metadata."""
    location = Location.of(where, options)
    if location.local is not None:
        p = location.local / "zarr.json"
        return p.is_file() and FORMAT_NAME in p.read_text(errors="replace")
    disk = open_store(location, read_only=True)
    found = sync(disk.get("zarr.json", default_buffer_prototype()))
    return found is not None and FORMAT_NAME in found.to_bytes().decode(errors="replace")


def _exists(path: Location, disk: RecordingDisk, key: str) -> bool:
    """Whether ``key`` exists: the first request to a store, so the place where a bucket
    that cannot be reached (no server, no credentials, no such bucket) says so."""
    try:
        return sync(disk.exists(key))
    except OSError:
        raise
    except Exception as exc:  # obstore's errors
        if path.local is not None:
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise WordybirdError(f"cannot reach {path}: {first_line}") from exc
