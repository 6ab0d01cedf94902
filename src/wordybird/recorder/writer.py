"""StreamingRecorder: snapshot → bounded queue → background Zarr writes.

``record()`` copies the step's tensors into preallocated snapshot buffers (pinned host
memory with an asynchronous copy when they live on a GPU) and hands them to one writer
thread, which compresses and writes them and then commits the step. A fixed pool of
``queue_size + 1`` buffer sets is the only per-step memory: when the disk is slower than
training, ``record()`` waits for a free buffer set (back-pressure) instead of allocating.
A process killed outright loses the steps not yet committed: up to ``queue_size`` waiting
in the queue plus the one being written.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from wordybird import knobs
from wordybird.constants import Mode
from wordybird.dtypes import numpy_dtype_of
from wordybird.errors import WordybirdError
from wordybird.recorder.commit import WritableStore
from wordybird.recorder.format import is_recording
from wordybird.recorder.layout import FieldSpec, field_specs_for
from wordybird.recorder.predict import Prediction
from wordybird.recorder.snapshot import Snapshot, SnapshotPool, as_tensor
from wordybird.storage import Location

_STOP = object()
#: recorded_steps holds int64 step numbers.
_INT64 = np.iinfo(np.int64)

#: Recorders not closed yet, held weakly: this set alone must not keep one alive.
_OPEN: weakref.WeakSet[StreamingRecorder] = weakref.WeakSet()


def _close_at_exit() -> None:
    """Write and commit what recorders nobody closed still hold, as the interpreter exits.

    The writer is a daemon thread (an idle writer of a forgotten recorder must not block
    the exit forever), so without this the steps still queued would vanish without a word.
    """
    for recorder in list(_OPEN):
        try:
            recorder.close()
        except WordybirdError as exc:
            warnings.warn(f"closing an unclosed recorder at exit: {exc}", stacklevel=1)


# Not `atexit`: by then concurrent.futures has refused new work to every thread pool, and
# the store writes metadata through one (asyncio.to_thread), the codec threads are one.
# threading's own exit hooks run
# first, in reverse order of registration, so this one runs before concurrent.futures'.
threading._register_atexit(_close_at_exit)


class StreamingRecorder:
    """Record one step at a time into a Zarr recording, with memory independent of length.

    Use as a context manager, or call :meth:`close` (a recorder still open when the
    interpreter exits is closed then). The first :meth:`record` fixes each field's shape
    and dtype; later steps must match. A background error (a full disk, say) is raised by
    the next call, and by :meth:`close`; steps committed before it stay, and a new recorder
    with ``resume=True`` continues after them once the cause is gone.

    Args:
        path: the recording's folder (conventionally ``*.zarr``), an ``s3://bucket/prefix``
            URL, or a :class:`~wordybird.storage.Location`.
        metadata: JSON-able run metadata, stored in the group's attributes.
        mode: ``"default"`` (core Zarr codecs only: any Zarr v3 reader decodes it),
            ``"compact"`` (differences between steps, decoded by wordybird; see FORMAT.md) or
            ``"predictive"`` (differences from the optimizer's update rule, for the fields
            the first :meth:`record` gives rules of; compact for the other big fields).
        resume: continue an existing recording after its last committed step.
        overwrite: replace the recording (or empty folder) at ``path``; anything else there
            is refused.
        queue_size: steps that may wait for the writer before ``record()`` blocks. Each
            holds a buffer set as large as one step (``queue_size + 1`` sets in all): for
            big steps, ``queue_size=1`` keeps two (benchmarks/bench_capture.py).
        durable: fsync each step's files, then the header that commits it, then the folder,
            so that a power loss (not only a killed process) keeps every committed step.
            Costs time per step: see benchmarks/bench_durable.py. (On S3 every
            acknowledged write is durable already.)
        storage_options: for an ``s3://`` URL, obstore S3 settings overriding the AWS
            environment variables (``endpoint``, ``region``, ``access_key_id``, …).
        codec_threads: threads that compress each step's chunks. None: one when the
            recorded tensors are on the CPU (training keeps every core busy there), every
            core when they are on a GPU; ``$WORDYBIRD_CODEC_THREADS`` overrides that.

    Example::

        import torch
        import wordybird

        w = torch.zeros(4, 3, dtype=torch.bfloat16)
        with wordybird.StreamingRecorder("run.zarr", metadata={"lr": 0.5}) as rec:
            for step in range(3):
                w += 0.5  # a training step
                rec.record(step, {"weights": w, "loss": torch.tensor(1.0 / (step + 1))})
        assert wordybird.open("run.zarr")["weights"][-1].eq(1.5).all()
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Location,
        *,
        metadata: Mapping[str, Any] | None = None,
        mode: Mode = "default",
        resume: bool = False,
        overwrite: bool = False,
        queue_size: int = 2,
        durable: bool = False,
        storage_options: Mapping[str, str] | None = None,
        codec_threads: int | None = None,
    ) -> None:
        if queue_size < 1:
            raise WordybirdError(f"queue_size must be at least 1, got {queue_size}")
        if codec_threads is not None:  # refused now, not at the first step
            knobs.codec_threads(codec_threads, on_gpu=False)
        where = Location.of(path, storage_options)
        #: the recording's folder (a Path), or its s3:// URL
        self.path: Path | str = where.local if where.local is not None else where.text
        if resume and overwrite:
            raise WordybirdError("resume and overwrite exclude each other")
        if resume:
            if not is_recording(where):
                raise WordybirdError(f"cannot resume {where}: it is not a wordybird recording")
            self._store = WritableStore.open(where, read_only=False, durable=durable)
            with self._disk_errors("resuming"):
                self._store.discard_uncommitted()
                if metadata:
                    self._store.update_metadata(metadata)
        else:
            self._store = WritableStore.create(
                where, metadata=metadata, mode=mode, overwrite=overwrite, durable=durable
            )
        self._codec_threads = codec_threads
        self._thread_cpu = 0.0  # the writer thread's CPU seconds so far
        self._work: queue.Queue[Any] = queue.Queue()
        self._pool = SnapshotPool(queue_size + 1)
        self._error: BaseException | None = None
        self._closed = False
        steps = self._store.steps()
        self._last_step: int | None = int(steps[-1]) if len(steps) else None
        self._specs: dict[str, FieldSpec] = dict(self._store.fields)
        self._thread = threading.Thread(target=self._run, name="wordybird-writer", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    # -- public API -----------------------------------------------------------------------

    @property
    def last_step(self) -> int | None:
        """The last step handed to :meth:`record` (or committed before a resume)."""
        return self._last_step

    @property
    def mode(self) -> Mode:
        """The recording's mode (a resumed recording keeps its own)."""
        return self._store.mode

    @property
    def fields(self) -> tuple[str, ...]:
        """The recording's fields (empty until its first step fixes them; a resumed
        recording's own)."""
        return tuple(self._specs)

    @property
    def writer_cpu_seconds(self) -> float:
        """CPU seconds the background writer has spent so far: its thread's and its codec
        threads' (what recording costs the machine besides ``record()``'s copies)."""
        return self._thread_cpu + self._store.codec_pool_cpu_seconds

    @property
    def waited_seconds(self) -> float:
        """Seconds :meth:`record` has waited for the writer so far (back-pressure: every
        buffer set was still queued or being written)."""
        return self._pool.waited_seconds

    @property
    def committed(self) -> int:
        """How many steps are committed on disk so far."""
        return self._store.committed

    def record(
        self,
        step: int,
        tensors: Mapping[str, torch.Tensor | np.ndarray | float],
        *,
        predictions: Mapping[str, Prediction] | None = None,
    ) -> None:
        """Snapshot one step's tensors and queue them for writing.

        When this returns, the values are copied: the caller may change its tensors at once.
        Blocks while ``queue_size`` steps are already waiting (back-pressure).

        ``predictions`` (predictive mode): how each named field's steps are predicted from
        the optimizer's update rule (the capture layer, which knows the optimizer, gives
        them). They are part of the layout, which the recording's first step fixes: given
        with a later step, they change nothing.
        """
        self._check_open()
        step = self._check_step(step)
        if not isinstance(tensors, Mapping):  # record(step, w) instead of {"name": w}
            raise WordybirdError(
                "record() takes a mapping of field names to values, e.g. "
                f"{{'embeddings': tensor}}, not a {type(tensors).__name__}"
            )
        values = {name: as_tensor(name, value) for name, value in tensors.items()}
        specs = self._specs
        if not specs:  # the first step fixes the layout, once it is accepted
            if not values:
                raise WordybirdError("record() needs at least one field")
            probe = {n: np.empty(t.shape, dtype=numpy_dtype_of(t.dtype)) for n, t in values.items()}
            specs = field_specs_for(probe, self._store.mode, predictions)
        self._check_fields(step, values, specs)
        if not self._specs:  # the writer has not started: its threads can still be chosen
            on_gpu = any(value.device.type != "cpu" for value in values.values())
            self._store.codec_threads = knobs.codec_threads(self._codec_threads, on_gpu=on_gpu)
        self._specs = specs
        snapshot = self._pool.take(specs, step, values, while_waiting=self._raise_background_error)
        self._last_step = step
        self._work.put(snapshot)

    def flush(self) -> None:
        """Wait until every queued step is committed; raise a background error if any."""
        self._check_open()
        self._work.join()
        self._raise_background_error()

    def truncate(self, after_step: int) -> None:
        """Drop committed steps after ``after_step`` (to re-run them from a checkpoint)."""
        self.flush()
        steps = self._store.steps()
        keep = int(np.searchsorted(steps, after_step, side="right"))
        with self._disk_errors("truncating"):
            self._store.truncate(keep)
        self._last_step = int(steps[keep - 1]) if keep else None

    def update_metadata(self, entries: Mapping[str, Any]) -> None:
        """Merge entries into the recording's run metadata (e.g. a final summary)."""
        self.flush()
        with self._disk_errors("updating the metadata of"):
            self._store.update_metadata(entries)

    def close(self) -> None:
        """Write every queued step, stop the writer, and raise any background error."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self._work.put(_STOP)
        self._thread.join()
        self._raise_background_error()

    def __enter__(self) -> StreamingRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # keep what was recorded; the original exception is what the caller needs to see
        with contextlib.suppress(WordybirdError):
            self.close()

    # -- validation -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise WordybirdError(f"the recorder for {self.path} is closed")
        self._raise_background_error()

    def _check_step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise WordybirdError(f"step must be an integer, got {step!r}")
        step = int(step)
        if not _INT64.min <= step <= _INT64.max:  # else the writer thread fails on it later
            raise WordybirdError(f"step {step} is outside the int64 range of recorded_steps")
        if self._last_step is not None and step <= self._last_step:
            raise WordybirdError(
                f"step {step} is not greater than the last recorded step {self._last_step} "
                f"in {self.path}"
            )
        return step

    def _check_fields(
        self, step: int, values: Mapping[str, torch.Tensor], specs: Mapping[str, FieldSpec]
    ) -> None:
        missing = sorted(set(specs) - set(values))
        extra = sorted(set(values) - set(specs))
        if extra:
            raise WordybirdError(
                f"step {step}: field(s) {', '.join(extra)} were not in the recording's first "
                f"step (fields are fixed then: {', '.join(specs)})"
            )
        if missing:
            raise WordybirdError(f"step {step}: missing field(s) {', '.join(missing)}")
        for name, value in values.items():
            spec = specs[name]
            dtype = numpy_dtype_of(value.dtype)
            if tuple(value.shape) != spec.shape or np.dtype(dtype) != spec.numpy_dtype:
                raise WordybirdError(
                    f"step {step}: field {name!r} has shape {tuple(value.shape)} and dtype "
                    f"{dtype}, but the recording holds shape {spec.shape} and dtype "
                    f"{spec.dtype}"
                )

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        knobs.lower_this_threads_priority()
        while True:
            item = self._work.get()
            start = time.thread_time()
            try:
                if item is _STOP:
                    self._store.close()
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as exc:  # surfaced on the caller's next call
                self._error = exc
            finally:
                if item is not _STOP:
                    self._pool.give_back(item)
                self._thread_cpu += time.thread_time() - start
                self._work.task_done()

    def _write(self, snapshot: Snapshot) -> None:
        if not self._store.fields:
            self._store.define_fields(self._specs)
        self._store.append(snapshot.step, snapshot.arrays())

    def _raise_background_error(self) -> None:
        if self._error is None:
            return
        error = self._error
        if isinstance(error, OSError):
            raise WordybirdError(
                f"writing to {self.path} failed: {error}; {self._safe()}"
            ) from error
        raise WordybirdError(
            f"the background writer for {self.path} failed: {error!r}; {self._safe()}"
        ) from error

    @contextlib.contextmanager
    def _disk_errors(self, action: str) -> Iterator[None]:
        """Report a failing disk (full, gone read-only) as one WordybirdError saying what is
        safe, like the writer thread's failures."""
        try:
            yield
        except OSError as exc:
            raise WordybirdError(f"{action} {self.path} failed: {exc}; {self._safe()}") from exc

    def _safe(self) -> str:
        return (
            f"the first {self._store.committed} step(s) are committed and intact "
            "(a recorder opened with resume=True continues after them)"
        )
