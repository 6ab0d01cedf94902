"""Which core Zarr codec for recorded bf16 tensors: the measurement behind format.py.

For each [V, D] field (embeddings, grads, momentum, variance) and each candidate codec,
the lossless ratio and one core's compression speed, on the values themselves (default
mode), on their XOR with the previous step, and on their difference in ULPs from it (compact
mode's encoding, ``format.delta_encode``). Tensors are real when
available (``--recording PATH`` or /tmp/real), cut into the chunks the recorder writes.

Run: ``python benchmarks/codecs.py [--recording PATH] [--steps N]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numcodecs
import numpy as np

from _common import (
    MATRIX_FIELDS,
    TensorSource,
    bits_of,
    chunks_as_stored,
    tensor_source,
    time_compress,
)
from wordybird.recorder.delta import delta_encode

#: Candidates: every one is a core Zarr v3 codec (``blosc`` or ``zstd``), which any Zarr
#: reader, TensorStore included, decodes.
CANDIDATES: dict[str, numcodecs.abc.Codec] = {
    **{
        f"blosc zstd{level} {name}": numcodecs.Blosc("zstd", level, shuffle, typesize=2)
        for level in (1, 3, 5)
        for name, shuffle in (
            ("shuffle", numcodecs.Blosc.SHUFFLE),
            ("bitshuf", numcodecs.Blosc.BITSHUFFLE),
        )
    },
    "blosc lz4 shuffle": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE, typesize=2),
    "blosc lz4 bitshuf": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.BITSHUFFLE, typesize=2),
    "zstd1": numcodecs.Zstd(level=1),
    "zstd3": numcodecs.Zstd(level=3),
}


def measured_positions(count: int, steps: int) -> list[int]:
    """``steps`` positions spread over the run, each with a previous step to diff against."""
    if count < 2:
        raise SystemExit("codecs.py needs at least two consecutive steps")
    return sorted({max(1, round((i + 1) * count / steps) - 1) for i in range(steps)})


def measure(source: TensorSource, steps: int) -> None:
    """Print the ratio/speed tables for ``steps`` positions of ``source``."""
    positions = measured_positions(source.count, steps)
    print(f"tensors: {source.label}; positions {positions} (XOR / delta: vs the one before)")
    inputs: dict[tuple[str, str], list[np.ndarray]] = {}
    for position in positions:
        previous, current = source.load(position - 1), source.load(position)
        for field in MATRIX_FIELDS:
            bits = bits_of(current[field])
            before = bits_of(previous[field])
            inputs.setdefault((field, "values"), []).extend(chunks_as_stored(field, bits))
            inputs.setdefault((field, "XOR-prev"), []).extend(
                chunks_as_stored(field, bits ^ before)
            )
            inputs.setdefault((field, "delta-prev"), []).extend(
                chunks_as_stored(field, delta_encode(bits, before))
            )

    header = "".join(f"{f:>11s}" for f in MATRIX_FIELDS)
    for encoding in ("values", "XOR-prev", "delta-prev"):
        print(f"\n{encoding}: ratio per field, overall ratio and one core's MB/s")
        print(f"{'codec':20s}{header}{'overall':>10s}{'MB/s':>7s}")
        for name, codec in CANDIDATES.items():
            raw = packed = seconds = 0.0
            cells = ""
            for field in MATRIX_FIELDS:
                chunks = inputs[field, encoding]
                nbytes = sum(c.nbytes for c in chunks)
                ratio, speed = time_compress(codec, chunks)
                cells += f"{ratio:10.2f}×"
                raw += nbytes
                packed += nbytes / ratio
                seconds += nbytes / speed
            print(f"{name:20s}{cells}{raw / packed:9.2f}×{raw / seconds / 1e6:7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recording", type=Path, help="a recording to take the steps from")
    parser.add_argument("--steps", type=int, default=3, help="steps measured (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="codecs-") as tmp:
        measure(tensor_source(args.recording, 10**9, Path(tmp)), args.steps)


if __name__ == "__main__":
    main()
