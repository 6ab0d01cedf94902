"""A recording as a lazy ``xarray.Dataset`` backed by Dask: :meth:`Recording.to_xarray`.

Every field becomes a Dask array whose chunks are the recording's read blocks
(:meth:`Recording.block_length`): one step of a big field, many steps of a small one, and in
a compact or predictive store one keyframe run of a difference field, decoded in one task,
so every step is decoded once. Building the Dataset reads nothing but what opening the
recording already read (the step numbers); each chunk is read when a computation needs it, through
:meth:`Recording.read_block`, so damage and truncations are reported as wordybird reports
them, for the steps concerned only.

The task graph holds no open file: each chunk's task carries a picklable reference to the
recording (:meth:`Recording.reopener`), which a process opens once per Dataset, so the
Dataset outlives the recording it was built from. A ``distributed`` worker process needs no
setup: unpickling a task imports wordybird, and opening the store imports the module that
registers Zarr's ``bfloat16`` data type, before any array is opened there.

Dimension names (one rule for every field, stated in the README):

- the first axis is ``step``; its coordinate is the recorded step numbers;
- the embedding matrix ``[V, D]`` (the ``embeddings`` field, or the field named by
  ``token_field``) names ``token`` (coordinate ``0..V-1``) and ``dim``: in every field, a
  first per-step axis of length ``V`` is ``token``, and a second axis of length ``D``
  following it is ``dim`` (``logits [step, token]``, ``grads [step, token, dim]``);
- any other axis ``i`` is ``<owner>_dim<i>``, where the owner is the field itself, or, for a
  parameter's field ``P/key`` of the same per-step shape as ``P/value``, the parameter ``P``:
  so ``P/value``, ``P/grad`` and ``P/exp_avg`` share their dimensions and align.

Variable names are the field names, ``/`` included (xarray accepts them; a netCDF file does
not, so rename before ``to_netcdf``).
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wordybird.errors import WordybirdError
from wordybird.extras import needing_extras

if TYPE_CHECKING:
    import xarray

    from wordybird.recording import Recording

#: The dimension names the rule gives besides ``<owner>_dim<i>``.
STEP, TOKEN, DIM = "step", "token", "dim"
#: Recordings a process keeps open for Datasets' tasks (one per Dataset built).
_OPEN_LIMIT = 16


def to_xarray(recording: Recording, *, token_field: str | None = None) -> xarray.Dataset:
    """See :meth:`Recording.to_xarray`."""
    with needing_extras("to_xarray"):
        import dask.array as da
        import xarray as xr
    n = len(recording)
    token_shape = _token_shape(recording, token_field)
    shapes = {field: recording.step_shape(field) for field in recording.fields}
    source = _Source(recording.reopener(), uuid.uuid4().hex)
    variables = {}
    for field, shape in shapes.items():
        if field in (STEP, TOKEN, DIM):
            raise WordybirdError(
                f"{recording.path}: the field {field!r} has the name of a dimension; "
                "to_xarray cannot name a variable so"
            )
        dtype = recording.numpy_dtype(field)
        view = FieldBlocks(source, field, (n, *shape), dtype)
        array = da.from_array(
            view,
            chunks=(_blocks(n, recording.block_length(field)), *((size,) for size in shape)),
            name=f"wordybird-{field.replace('/', '.')}-{source.key}",
            lock=False,
            asarray=False,
            fancy=False,
            meta=np.empty((0,) * (1 + len(shape)), dtype=dtype),
        )
        variables[field] = ((STEP, *dim_names(field, shape, shapes, token_shape)), array)
    coords: dict[str, Any] = {STEP: np.asarray(recording.steps, dtype=np.int64)}
    if token_shape is not None:
        coords[TOKEN] = np.arange(token_shape[0], dtype=np.int64)
    dataset = xr.Dataset(variables, coords=coords, attrs=dict(recording.metadata))
    dataset.encoding["source"] = str(recording.path)
    return dataset


def dim_names(
    field: str,
    shape: tuple[int, ...],
    shapes: dict[str, tuple[int, ...]],
    token_shape: tuple[int, int] | None,
) -> tuple[str, ...]:
    """The names of one step's axes of ``field`` (the module docstring's rule).

    ``shapes`` holds every field's per-step shape; ``token_shape`` the embedding matrix's
    ``(V, D)``, or None when the recording has none.
    """
    parameter, _, _ = field.rpartition("/")
    owner = parameter if parameter and shapes.get(f"{parameter}/value") == shape else field
    names: list[str] = []
    for axis, size in enumerate(shape):
        if token_shape is not None and axis == 0 and size == token_shape[0]:
            names.append(TOKEN)
        elif token_shape is not None and axis == 1 and names[0] == TOKEN and size == token_shape[1]:
            names.append(DIM)
        else:
            names.append(f"{owner}_dim{axis}")
    return tuple(names)


def _token_shape(recording: Recording, token_field: str | None) -> tuple[int, int] | None:
    """The embedding matrix's (V, D): ``token_field``'s, else ``embeddings``', else none."""
    explicit = token_field is not None
    if token_field is None:
        if "embeddings" not in recording.fields:
            return None
        token_field = "embeddings"
    elif token_field not in recording.fields:
        raise WordybirdError(
            f"{recording.path} has no field {token_field!r} to take token and dim from; "
            f"it has {', '.join(recording.fields)}"
        )
    shape = recording.step_shape(token_field)
    if len(shape) != 2:
        if not explicit:
            return None
        raise WordybirdError(
            f"{recording.path}: {token_field!r} has per-step shape {list(shape)}; token and "
            "dim come from a [vocab, dim] field"
        )
    return shape[0], shape[1]


def _blocks(n: int, length: int) -> tuple[int, ...]:
    """Chunk sizes along ``step``: blocks of ``length`` positions, the last one partial."""
    full, rest = divmod(n, length)
    return (length,) * full + ((rest,) if rest or not n else ())


@dataclass(frozen=True)
class _Source:
    """A recording as the tasks of one Dataset reach it: how to open it, and which Dataset."""

    reopen: Callable[[], Recording]
    key: str  # one per Dataset built: a process opens the recording once for it

    def open(self, positions: int) -> Recording:
        """The recording, open in this process, holding at least ``positions`` steps."""
        with _open_lock:
            recording = _open.get(self.key)
            if recording is not None:
                _open.move_to_end(self.key)
        if recording is None:
            recording = self.reopen()
            with _open_lock:
                _open[self.key] = recording
                while len(_open) > _OPEN_LIMIT:
                    _open.popitem(last=False)  # closed when its last task lets go of it
        if len(recording) < positions:
            raise WordybirdError(
                f"{recording.path} holds {len(recording)} step(s) now, fewer than the "
                f"{positions} this Dataset was built on (truncated since?): build it again"
            )
        return recording


_open: collections.OrderedDict[str, Recording] = collections.OrderedDict()
_open_lock = threading.Lock()


class FieldBlocks:
    """One field as an array for ``dask.array.from_array``: shape, dtype, and indexing that
    reads only the positions asked for (:meth:`Recording.read_block`). Pickles small."""

    def __init__(
        self, source: _Source, field: str, shape: tuple[int, ...], dtype: np.dtype
    ) -> None:
        self.source = source
        self.field = field
        self.shape = shape
        self.dtype = dtype
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0] if key else slice(None), key[1:]
        n = self.shape[0]
        if isinstance(first, slice):
            positions = range(n)[first]
            start = min(positions, default=0)
            stop = max(positions, default=-1) + 1
            within: slice | int | np.ndarray = (
                slice(None) if positions.step == 1 else np.asarray(positions) - start
            )
        elif isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            start = int(first) + n if first < 0 else int(first)
            if not 0 <= start < n:
                raise IndexError(f"position {first} is outside the {n} step(s) of {self.field!r}")
            stop, within = start + 1, 0
        else:
            raise TypeError(f"index positions with an int or a slice, not {type(first).__name__}")
        block = self.source.open(stop).read_block(self.field, start, stop)
        return block[(within, *rest)]

    def __repr__(self) -> str:
        return f"FieldBlocks({self.field!r}, shape={self.shape}, dtype={self.dtype})"
