"""Tuning constants: how much work wordybird does at once, and the variables overriding them.

Values here change speed and memory, never what is stored or read (the format's own
constants are in ``constants.py`` and ``recorder/layout.py``).
"""

from __future__ import annotations

import os

from wordybird.errors import WordybirdError

#: Overrides the writer's number of codec threads (``StreamingRecorder(codec_threads=…)``).
CODEC_THREADS_VARIABLE = "WORDYBIRD_CODEC_THREADS"

#: Decoding reads the stored steps of a keyframe run in slices of at most this many bytes:
#: one read of many chunks (zarr decodes them concurrently) costs far less than one a step.
RUN_READ_BYTES = 64 << 20

#: Elements predicted at a time by predictive mode's predictor (the arithmetic is
#: elementwise, so the blocks change no bit): large enough that numpy's per-call overhead,
#: under the GIL, is small against the arithmetic; small enough that the float32
#: temporaries stay in the cache (measured: benchmarks/bench_predictive.py).
PREDICT_BLOCK = 1 << 16

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
