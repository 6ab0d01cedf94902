"""Compact and predictive modes' codec: each step stored as its difference, in ULPs, from a
reference: the previous step (compact), or its prediction from the previous step (``predict.py``).

Pure functions on the unsigned bit patterns of a step (FORMAT.md, "Codecs"), and the
keyframe chains that the store encodes and decodes them along.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from wordybird.errors import DamagedRecordingError
from wordybird.knobs import DELTA_BLOCK, RUN_READ_BYTES

#: The bits a step is stored as a difference from, given the field, the position and the
#: previous position's bits.
Reference = Callable[[str, int, np.ndarray], np.ndarray]


def previous_step(name: str, position: int, previous: np.ndarray) -> np.ndarray:
    """Compact mode's reference: the previous step itself."""
    return previous


def delta_encode(
    bits: np.ndarray, previous: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Compact mode's encoding of a step: its bits minus the previous step's, zigzagged.

    Within one sign, a float's bit pattern counts lattice points, so the wrapping
    difference of two steps' bits is each coordinate's move in ULPs: 0 for the many that
    stay put, small for the rest. Zigzag (0, -1, 1, -2 … → 0, 1, 2, 3 …) keeps small moves
    of either direction small as unsigned numbers, so nearly all high bytes are zero. It
    packs better than an XOR with the previous step (measured: benchmarks/codecs.py): a
    one-ULP move across a mantissa carry flips many bits but differs by one.

    ``out`` (of ``bits``' shape and dtype) receives the result: the writer reuses one per
    field, so that a step allocates nothing. The work runs in blocks that stay in the cache.
    """
    width = bits.dtype.itemsize * 8
    signed = np.dtype(f"<i{bits.dtype.itemsize}")
    if out is None:
        out = np.empty_like(bits)
    flat, before, result = bits.reshape(-1), previous.reshape(-1), out.reshape(-1)
    sign = np.empty(min(DELTA_BLOCK, flat.size), dtype=signed)
    for start in range(0, flat.size, DELTA_BLOCK):
        part = slice(start, start + DELTA_BLOCK)
        diff = np.subtract(flat[part], before[part], out=result[part])  # unsigned: wraps
        top = np.right_shift(diff.view(signed), width - 1, out=sign[: diff.size])
        np.left_shift(diff, 1, out=diff)
        np.bitwise_xor(diff, top.view(bits.dtype), out=diff)
    return out


def delta_decode(stored: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Invert :func:`delta_encode`: the step's bits from its delta and the previous bits."""
    diff, sign = stored >> 1, stored & 1
    diff ^= np.negative(sign, out=sign)  # unsigned negation: 0 or all ones
    diff += previous
    return diff


def decode_run(stored: np.ndarray) -> np.ndarray:
    """Consecutive positions' bits from their stored form, the first being a keyframe.

    The same as :func:`delta_decode` applied position after position, done as one wrapping
    cumulative sum along the first axis (unsigned sums wrap modulo 2^w, as the deltas do).
    """
    diffs, sign = stored >> 1, stored & 1
    diffs ^= np.negative(sign, out=sign)
    if len(diffs):
        diffs[0] = stored[0]
    return np.cumsum(diffs, axis=0, dtype=stored.dtype, out=diffs)


class DeltaChains:
    """The keyframe chains of a recording's difference fields, with a one-step cache.

    Every ``interval``-th position is stored whole (a keyframe), the others as
    :func:`delta_encode` from their reference, which is computed from the previous step (by
    default the previous step itself). Each field's last encoded or decoded
    ``(position, bits)`` is kept, so recording, or reading steps in order (export,
    analysis), costs one chunk per step; a random step costs up to ``interval`` chunks.
    Decoded steps are handed out read-only, without a copy: they are the cache itself.

    Args:
        interval: the keyframe interval K.
        read_stored: a field's stored array at one position (a keyframe's bits or a delta),
            or at a slice of positions.
        reference: what a position is stored as a difference from (:data:`Reference`).
    """

    def __init__(
        self,
        interval: int,
        read_stored: Callable[[str, int | slice], np.ndarray],
        reference: Reference = previous_step,
    ) -> None:
        self.interval = interval
        self._read_stored = read_stored
        self._reference = reference
        self._last: dict[str, tuple[int, np.ndarray]] = {}
        #: the encoder's own buffers per field: its copy of the last step, and the delta
        self._kept: dict[str, np.ndarray] = {}
        self._deltas: dict[str, np.ndarray] = {}

    def encode(self, name: str, position: int, bits: np.ndarray) -> np.ndarray:
        """A step's bits as stored at ``position``: themselves at a keyframe, else a delta
        (in a buffer reused for the field's next step: write it before encoding again)."""
        if position % self.interval == 0:
            stored = bits
        else:
            held = self._last.get(name)
            if held is None or held[0] != position - 1:  # resumed or truncated since
                held = (position - 1, self.decode(name, position - 1))
            out = _buffer(self._deltas, name, bits)
            stored = delta_encode(bits, self._reference(name, position, held[1]), out)
        kept = _buffer(self._kept, name, bits)
        np.copyto(kept, bits)
        self._last[name] = (position, kept)
        return stored

    def decode(self, name: str, position: int) -> np.ndarray:
        """The step's bits at ``position`` (read-only), added up from its keyframe (or the
        cached step)."""
        first = position - position % self.interval
        held = self._last.get(name)
        if held is not None and first <= held[0] <= position:
            start, bits = held[0] + 1, held[1]
        else:
            start, bits = first + 1, self._read_stored(name, first)
        for p, stored in self._stored_run(name, start, position + 1, bits.nbytes):
            bits = delta_decode(stored, self._reference(name, p, bits))
        bits.flags.writeable = False
        self._last[name] = (position, bits)
        return bits

    def _stored_run(
        self, name: str, start: int, stop: int, step_nbytes: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Positions ``[start, stop)`` as stored, read a slice at a time: one read of many
        chunks (zarr decodes them concurrently) costs far less than one read per step. A
        damaged slice is read again step by step, so that the error names the step."""
        per_read = max(1, RUN_READ_BYTES // max(1, step_nbytes))
        for first in range(start, stop, per_read):
            last = min(stop, first + per_read)
            run = None
            if last - first > 1:
                with contextlib.suppress(DamagedRecordingError):
                    run = self._read_stored(name, slice(first, last))
            for p in range(first, last):
                yield p, (self._read_stored(name, p) if run is None else run[p - first])


def _buffer(buffers: dict[str, np.ndarray], name: str, like: np.ndarray) -> np.ndarray:
    """A writable buffer of ``like``'s shape and dtype kept for ``name`` across steps."""
    buffer = buffers.get(name)
    if (
        buffer is None
        or buffer.shape != like.shape
        or buffer.dtype != like.dtype
        or not (
            buffer.flags.writeable  # handed out read-only by a decode since
        )
    ):
        buffer = buffers[name] = np.empty_like(like)
    return buffer
