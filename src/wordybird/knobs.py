"""Tuning constants: how much work wordybird does at once, and the variables overriding them.

Values here change speed and memory, never what is stored or read (the format's own
constants are in ``constants.py`` and ``recorder/layout.py``).
"""

from __future__ import annotations

import os

from wordybird.errors import WordybirdError

#: Overrides the writer's number of codec threads (``StreamingRecorder(codec_threads=…)``).
CODEC_THREADS_VARIABLE = "WORDYBIRD_CODEC_THREADS"

#: Overrides how the writer's threads are scheduled (``idle`` or ``normal``; see below).
WRITER_PRIORITY_VARIABLE = "WORDYBIRD_WRITER_PRIORITY"

#: Decoding reads the stored steps of a keyframe run in slices of at most this many bytes:
#: one read of many chunks (zarr decodes them concurrently) costs far less than one a step.
RUN_READ_BYTES = 64 << 20

#: Elements predicted at a time by predictive mode's predictor (the arithmetic is
#: elementwise, so the blocks change no bit): large enough that numpy's per-call overhead,
#: under the GIL, is small against the arithmetic; small enough that the float32
#: temporaries stay in the cache (measured: benchmarks/bench_predictive.py).
PREDICT_BLOCK = 1 << 18

#: Elements a compact delta is computed over at a time (elementwise too; its temporaries
#: stay in the cache).
DELTA_BLOCK = 1 << 16

#: An export reads a field's consecutive steps at once up to this many bytes (one step of a
#: large field; all steps of a small one, in one store read).
EXPORT_BLOCK_BYTES = 8 << 20
#: Blocks an export decodes ahead of its writes (measured: benchmarks/bench_export.py).
EXPORT_READ_AHEAD = 1


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def codec_threads(requested: int | None, *, on_gpu: bool) -> int:
    """The writer's codec threads: ``requested``, else ``$WORDYBIRD_CODEC_THREADS``, else
    every core on a GPU run (training leaves the host's cores to the writer) and one on a
    CPU run (training keeps every core busy, and each writer CPU-second comes out of it)."""
    if requested is None:
        text = os.environ.get(CODEC_THREADS_VARIABLE, "").strip()
        if text:
            try:
                requested = int(text)
            except ValueError:
                raise WordybirdError(
                    f"{CODEC_THREADS_VARIABLE}={text!r}: give a number of threads"
                ) from None
    if requested is None:
        return available_cores() if on_gpu else 1
    if requested < 1:
        raise WordybirdError(f"codec_threads must be at least 1, got {requested}")
    return requested


def writer_priority() -> str:
    """How the writer's threads are scheduled: ``idle`` (the default: Linux's SCHED_IDLE,
    so they run only on cores nothing else wants) or ``normal``.

    Training on a CPU keeps every core in OpenMP parallel regions, and a region waits for
    its slowest thread: a writer at normal priority that preempts one of them stalls all
    of them, so each writer CPU-second cost training more than a second
    (benchmarks/bench_capture.py). At idle priority it runs in training's gaps instead, and
    where those are too few ``record()`` waits for a free buffer set, leaving the cores to
    it: the two never fight over a core. On a GPU run the host's cores are mostly idle, and
    the writer runs as fast as at normal priority.
    """
    value = os.environ.get(WRITER_PRIORITY_VARIABLE, "idle").strip() or "idle"
    if value not in ("idle", "normal"):
        raise WordybirdError(f"{WRITER_PRIORITY_VARIABLE}={value!r}: give idle or normal")
    return value


def lower_this_threads_priority() -> None:
    """Schedule the calling thread as :func:`writer_priority` says (where the system can)."""
    if writer_priority() == "idle" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
