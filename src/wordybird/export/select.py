"""What an export takes: the step range, the fields, the run's scalars, the file size, and
(with ``skip_damaged``) the steps that still read. Each refuses bad input with a message
that says what would have been right.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from wordybird.constants import STEPS_FIELD
from wordybird.errors import WordybirdError
from wordybird.export.layout import SCALAR_METADATA
from wordybird.recorder.reader import ZarrRecording
from wordybird.recording import Recording

StepRange = tuple[int | None, int | None]


def parse_steps(text: str) -> StepRange:
    """``"START:STOP"`` (either side may be empty) as a half-open step-number range."""
    start, sep, stop = text.partition(":")
    if not sep:
        raise WordybirdError(f"--steps takes START:STOP (STOP excluded), got {text!r}")
    try:
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise WordybirdError(
            f"--steps takes integer step numbers START:STOP, got {text!r}"
        ) from None


def select_positions(rec: Recording, steps: StepRange | str | None) -> range:
    """The positions of the recorded steps START <= step < STOP, all of them inside the run.

    A range reaching outside the recorded steps is an error rather than silently clipped:
    an export is usually meant to hold exactly the asked-for steps.
    """
    recorded = rec.steps
    if not len(recorded):
        raise WordybirdError(f"{rec.path} has no committed step to export")
    if steps is None:
        return range(len(recorded))
    start, stop = parse_steps(steps) if isinstance(steps, str) else steps
    first, last = int(recorded[0]), int(recorded[-1])
    low = first if start is None else start
    high = last + 1 if stop is None else stop
    span = f"recorded steps are {first}..{last}"
    if low < first or high > last + 1:
        raise WordybirdError(f"step range {low}:{high} reaches outside {rec.path} ({span})")
    begin = int(np.searchsorted(recorded, low, side="left"))
    end = int(np.searchsorted(recorded, high, side="left"))
    if begin >= end:
        raise WordybirdError(f"step range {low}:{high} holds no recorded step ({span})")
    return range(begin, end)


def select_fields(rec: Recording, fields: Iterable[str] | str | None) -> list[str]:
    """The per-step fields to export, in recording order; every one when ``fields`` is None."""
    if fields is None:
        return list(rec.fields)
    names = fields.split(",") if isinstance(fields, str) else list(fields)
    wanted = {name.strip() for name in names if name.strip()} - {STEPS_FIELD}
    unknown = sorted(wanted - set(rec.fields))
    if unknown:
        raise WordybirdError(
            f"{rec.path} has no field {', '.join(map(repr, unknown))}; "
            f"it has {', '.join(rec.fields)}"
        )
    if not wanted:
        raise WordybirdError("no field selected to export")
    return [name for name in rec.fields if name in wanted]


def split_metadata(
    metadata: Mapping[str, Any], taken: Iterable[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The notebook's scalars as 0-d tensors, and everything else JSON-encoded for the header.

    A scalar entry that is not a number of its kind (or whose name a field already uses)
    stays in the header metadata rather than being coerced.
    """
    taken = set(taken)
    scalars: dict[str, np.ndarray] = {}
    provenance: dict[str, str] = {}
    for key, value in metadata.items():
        dtype = SCALAR_METADATA.get(key)
        if dtype is not None and key not in taken and _fits(value, dtype):
            scalars[key] = np.asarray(value, dtype=dtype)
        else:
            provenance[key] = json.dumps(value)
    return scalars, provenance


def _fits(value: Any, dtype: np.dtype) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return dtype.kind == "f" or isinstance(value, int) or value.is_integer()


#: A size in bytes, optionally with a decimal (kB, MB, GB, TB) or binary (KiB … TiB) unit.
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*(?:([kmgt])(i?)b?|b?)\s*", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes from an int or text such as ``4GB``, ``500 MB``, ``2GiB`` or ``1e9``."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size)
        if match is None:
            raise WordybirdError(
                f"not a size: {size!r} (give bytes, or a number with kB, MB, GB, MiB, GiB)"
            )
        number, prefix, binary = match.groups()
        power = "kmgt".index(prefix.lower()) + 1 if prefix else 0
        scaled = float(number) * (1024 if binary else 1000) ** power
        if not math.isfinite(scaled):  # 1e400 parses, as infinity
            raise WordybirdError(f"{size!r} is too large for a file size")
        value = int(scaled)
    if value <= 0:
        raise WordybirdError(f"a file size must be positive, got {size!r}")
    return value


def readable_positions(
    rec: Recording, positions: Sequence[int], chosen: list[str]
) -> tuple[list[int], list[int]]:
    """The positions whose exported fields all read, and the step numbers left out."""
    if not isinstance(rec, ZarrRecording):
        return list(positions), []  # an export has no checksums to verify
    bad: set[int] = set()
    for damage in rec.damage():
        if damage.field in (STEPS_FIELD, *chosen):
            bad.update(range(damage.first_position, damage.last_position + 1))
    kept = [p for p in positions if p not in bad]
    if not kept:
        raise WordybirdError(f"every selected step of {rec.path} is damaged: nothing to export")
    return kept, [int(rec.steps[p]) for p in positions if p in bad]
