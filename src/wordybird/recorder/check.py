"""``wordybird check``: read every committed chunk of a recording and list what is damaged.

Every chunk carries a crc32c; reading it verifies the checksum and that it decodes, and a
chunk file that should exist but does not is damage too (zarr alone would read it as
zeros). A damaged chunk makes its (field, step) pairs unreadable, and in compact and
predictive mode also the later steps of its keyframe interval, which are rebuilt from it;
in predictive mode a predicted field is also unreadable wherever a field its prediction
reads is: the report lists those as well, so what it calls readable really reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from wordybird.constants import STEPS_FIELD
from wordybird.errors import DamagedRecordingError
from wordybird.recorder.format import RecordingStore
from wordybird.recorder.layout import DIFFERENCE_ENCODINGS


@dataclass(frozen=True)
class Damage:
    """Consecutive committed positions of one field that cannot be read, and why."""

    field: str
    first_position: int
    last_position: int
    steps: list[int] | None  # their step numbers (None when those cannot be read either)
    reason: str


def find_damage(store: RecordingStore) -> list[Damage]:
    """Every unreadable (field, positions) range of a store's committed steps."""
    try:
        numbers = store.steps()
    except DamagedRecordingError:
        numbers = None
    found: dict[str, list[tuple[int, int, str]]] = {}
    for name in [STEPS_FIELD, *store.fields]:
        found[name] = [
            (block[0], _run_end(store, name, block[-1]), reason)
            for block, reason in _unreadable_blocks(store, name)
        ]
    for name in _decoding_order(store):
        inputs = store.fields[name].prediction.inputs.values()
        found[name] += [
            (first, _run_end(store, name, last), f"decoded from {source!r}, damaged there")
            for source in inputs
            for first, last, _ in found.get(source, [])
        ]
    return [
        Damage(
            name,
            first,
            last,
            None if numbers is None else [int(s) for s in numbers[first : last + 1]],
            reason,
        )
        for name, ranges in found.items()
        for first, last, reason in ranges
    ]


def _run_end(store: RecordingStore, name: str, last: int) -> int:
    """The last position decoded through ``last``: the end of its keyframe interval for a
    difference field (the later steps of the interval are rebuilt from it)."""
    spec = store.fields.get(name)
    if spec is None or spec.encoding not in DIFFERENCE_ENCODINGS:
        return last
    interval = store.keyframe_interval
    return min(store.committed, (last // interval + 1) * interval) - 1


def _decoding_order(store: RecordingStore) -> list[str]:
    """The predicted fields, each after the predicted fields it reads (layout.py refuses
    cycles)."""
    order: list[str] = []

    def visit(name: str) -> None:
        spec = store.fields.get(name)
        if name in order or spec is None or spec.prediction is None:
            return
        for source in spec.prediction.inputs.values():
            visit(source)
        order.append(name)

    for name in store.fields:
        visit(name)
    return order


def _unreadable_blocks(store: RecordingStore, name: str) -> list[tuple[range, str]]:
    """The committed positions of one array that cannot be read, chunk row by chunk row,
    each with the reason; empty for a sound array. Reads (and so checksums) every chunk."""
    n = store.committed
    try:
        held, rows = store.stored_length(name), store.chunk_rows(name)
    except DamagedRecordingError as exc:
        return [(range(n), str(exc))] if n else []
    found = []
    if held < n:
        found.append((range(held, n), f"the array holds only {held} positions"))
        n = held
    for start in range(0, n, rows):
        block = range(start, min(start + rows, n))
        try:
            store.read_stored(name, slice(block.start, block.stop))
        except DamagedRecordingError as exc:
            found.append((block, str(exc)))
    return found


def check_recording(
    path: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A JSON-able report: what was verified and every damaged range (empty when sound)."""
    store = RecordingStore.open(path, read_only=True, storage_options=storage_options)
    damage = find_damage(store)
    return {
        "path": str(store.path),
        "committed": store.committed,
        "fields": [STEPS_FIELD, *store.fields],
        "damaged": [asdict(d) for d in damage],
    }


def format_check(report: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    verified = f"{report['committed']} committed step(s) of {len(report['fields'])} arrays"
    if not report["damaged"]:
        return f"{report['path']}: ok, {verified} read and checksummed"
    lines = [f"{report['path']}: DAMAGED ({verified} read)"]
    for d in report["damaged"]:
        steps = d["steps"]
        where = (
            (f"steps {steps[0]}..{steps[-1]}" if steps and len(steps) > 1 else f"step {steps[0]}")
            if steps
            else f"positions {d['first_position']}..{d['last_position']}"
        )
        lines.append(f"  {d['field']}: {where}: {d['reason']}")
    return "\n".join(lines)
