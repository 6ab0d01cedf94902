"""The recording's layout policy: which fields exist, how each is chunked and compressed.

Fixed by a recording's first step and written into its header (FORMAT.md): the store
(``format.py``) applies it, and nothing else decides it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from wordybird import dtypes
from wordybird.constants import (
    SMALL_FIELD_STEPS_PER_CHUNK,
    SMALL_STEP_BYTES,
    STEPS_FIELD,
    Mode,
    step_nbytes,
)
from wordybird.errors import WordybirdError
from wordybird.recorder.predict import Prediction

Encoding = Literal["raw", "delta", "predicted"]
#: Field dtypes that predictive mode predicts (in float32 arithmetic, float64 for float64).
FLOAT_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32", "float64")
#: Encodings stored as unsigned bit differences (from the previous step or a prediction).
DIFFERENCE_ENCODINGS: tuple[str, ...] = ("delta", "predicted")

#: A step's slice of a large field is cut into chunks of at most this many bytes, so that
#: the compressor runs on several cores and one step is read without touching any other.
CHUNK_TARGET_BYTES = 2 << 20
#: In compact mode every K-th position is stored whole (a keyframe); the others are stored
#: as the difference of their bits from the previous step's (see :func:`delta_encode`), so
#: a random step is decoded from at most K chunks and a sequential scan from one per step.
DEFAULT_KEYFRAME_INTERVAL = 16


@dataclass(frozen=True)
class FieldSpec:
    """One recorded field: its per-step shape and dtype, and how it is encoded on disk."""

    name: str
    dtype: str  # the logical dtype as a numpy name ("bfloat16", "float32", "int64", …)
    shape: tuple[int, ...]  # one step's shape
    encoding: Encoding = "raw"
    prediction: Prediction | None = None  # predictive mode: how each step is predicted

    @property
    def numpy_dtype(self) -> np.dtype:
        return dtypes.numpy_dtype(self.dtype)

    @property
    def stored_dtype(self) -> np.dtype:
        """The dtype of the Zarr array: the logical one, or unsigned bits for deltas."""
        if self.encoding in DIFFERENCE_ENCODINGS:
            return np.dtype(f"<u{self.numpy_dtype.itemsize}")
        return self.numpy_dtype

    @property
    def step_nbytes(self) -> int:
        return step_nbytes(self.shape, self.numpy_dtype)

    def to_json(self) -> dict[str, Any]:
        data = {"dtype": self.dtype, "shape": list(self.shape), "encoding": self.encoding}
        if self.prediction is not None:
            data["prediction"] = self.prediction.to_json()
        return data

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> FieldSpec:
        prediction = data.get("prediction")
        return cls(
            name,
            str(data["dtype"]),
            tuple(int(s) for s in data["shape"]),
            data.get("encoding", "raw"),
            None if prediction is None else Prediction.from_json(prediction),
        )


def chunk_shape(spec: FieldSpec) -> tuple[int, ...]:
    """Chunking: one step (or a slab of it) per chunk for big fields, many steps for small."""
    if spec.step_nbytes <= SMALL_STEP_BYTES:
        return (SMALL_FIELD_STEPS_PER_CHUNK, *spec.shape)
    if not spec.shape:
        return (1,)
    pieces = max(1, math.ceil(spec.step_nbytes / CHUNK_TARGET_BYTES))
    rows = max(1, math.ceil(spec.shape[0] / pieces))
    return (1, rows, *spec.shape[1:])


def compressors_for(spec: FieldSpec) -> tuple[Any, ...]:
    """Core Zarr codecs only (any Zarr v3 reader decodes them), then a crc32c checksum.

    Chosen by measurement on real tensors (benchmarks/bench_writer.py: WB1 and a GPT-2-small
    step). Big fields, values and differences alike, in every mode: blosc lz4 with bit
    shuffle, which gathers the sign and exponent bits (few distinct values in a bf16 tensor)
    and a difference's high bits (almost all zero) into long runs that lz4 packs at a few
    times zstd's speed per core, for nearly its ratio; the writer's CPU comes out of a
    CPU-bound training step, and a GPU run's steps come faster than zstd packs them. Small
    fields (losses, learning rates): zstd, whose cost there is nothing. Stores written with
    other codecs (zstd before) name theirs in each array's ``zarr.json``, and readers and
    appending writers follow them.
    """
    if spec.step_nbytes <= SMALL_STEP_BYTES:
        return (ZstdCodec(level=3), Crc32cCodec())
    itemsize = spec.stored_dtype.itemsize
    return (
        BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=itemsize),
        Crc32cCodec(),
    )


def check_field_name(name: object) -> None:
    """Refuse a field name that cannot be an array path of the recording's group.

    ``/`` separates groups (``"transformer.wte.weight/grad"``). zarr reserves names starting
    with ``__``; ``.``-names and ``*.partial`` collide with file-system and zarr
    temporaries; ``zarr.json`` is a group's metadata.
    """
    if name == STEPS_FIELD:
        raise WordybirdError(
            f"{STEPS_FIELD!r} is written from the step argument; it cannot be recorded as a field"
        )
    parts = name.split("/") if isinstance(name, str) else [None]
    for part in parts:
        if (
            not part
            or part.startswith((".", "__"))
            or part.endswith(".partial")
            or part == "zarr.json"
        ):
            raise WordybirdError(
                f"field name {name!r} cannot be an array of the recording: use a non-empty "
                "string of '/'-separated parts, none empty or starting with '.' or '__'"
            )


def check_field_names(names: Iterable[str]) -> None:
    """Each name valid, and none a group of another (``"a"`` beside ``"a/grad"``)."""
    names = list(names)
    for name in names:
        check_field_name(name)
    groups = {name.rsplit("/", i)[0] for name in names for i in range(1, name.count("/") + 1)}
    clash = sorted(groups.intersection(names))
    if clash:
        raise WordybirdError(
            f"field {clash[0]!r} is also the group of other fields ({clash[0]}/…); "
            "rename one of them"
        )


def field_specs_for(
    arrays: Mapping[str, np.ndarray],
    mode: Mode,
    predictions: Mapping[str, Prediction] | None = None,
) -> dict[str, FieldSpec]:
    """The layout fixed by a recording's first step.

    In predictive mode a big float field with a prediction is ``predicted``; any other big
    field is a compact ``delta``. Each prediction's inputs must be recorded fields of the
    step: refused otherwise, since a reader could never rebuild the field.
    """
    check_field_names(arrays)
    specs = {}
    for name, value in arrays.items():
        big = value.nbytes > SMALL_STEP_BYTES
        prediction = (predictions or {}).get(name) if mode == "predictive" else None
        if not big or dtypes.dtype_name(value.dtype) not in FLOAT_DTYPES:
            prediction = None
        if prediction is not None:
            _check_inputs(name, value, prediction, arrays)
        encoding: Encoding = "raw"
        if prediction is not None:
            encoding = "predicted"
        elif mode != "default" and big:
            encoding = "delta"
        specs[name] = FieldSpec(
            name, dtypes.dtype_name(value.dtype), tuple(value.shape), encoding, prediction
        )
    _check_acyclic(specs)
    return specs


def _check_acyclic(specs: Mapping[str, FieldSpec]) -> None:
    """Refuse predictions that read each other at the same step: no decoding order exists."""
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise WordybirdError(
                f"predictive mode: the predictions of {', '.join(path)} depend on each other "
                "at the same step; no order decodes them"
            )
        spec = specs.get(name)
        if name in done or spec is None or spec.prediction is None:
            return
        for source in spec.prediction.inputs.values():
            visit(source, (*path, name))
        done.add(name)

    for name in specs:
        visit(name, ())


def _check_inputs(
    name: str, value: np.ndarray, prediction: Prediction, arrays: Mapping[str, np.ndarray]
) -> None:
    """Every input a recorded field: a tensor of the field's shape, or a scalar (lr, norm)."""
    for role, source in prediction.inputs.items():
        found = arrays.get(source)
        scalar = role in ("lr", "grad_norm")
        if (
            found is None
            or source == name
            or (scalar and found.shape != ())
            or (not scalar and found.shape != value.shape)
        ):
            raise WordybirdError(
                f"predictive mode: field {name!r} is predicted from {source!r} ({role}), which "
                f"is not a recorded {'scalar' if scalar else f'field of shape {value.shape}'}"
            )


#: ``recorded_steps``, stored like any small field.
STEPS_SPEC = FieldSpec(STEPS_FIELD, "int64", ())
