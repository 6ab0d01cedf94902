"""``wordybird check``: read every committed chunk of a recording and list what is damaged.

Every chunk carries a crc32c; reading it verifies the checksum and that it decodes, and a
chunk file that should exist but does not is damage too (zarr alone would read it as
zeros). A damaged chunk makes its (field, step) pairs unreadable, and in compact mode also
the later steps of its keyframe interval, which are rebuilt from it: the report lists
those as well, so what it calls readable really reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from wordybird.errors import DamagedRecordingError
from wordybird.recorder.format import RecordingStore
from wordybird.recording import STEPS_FIELD


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
    damage = []
    for name in [STEPS_FIELD, *store.fields]:
        spec = store.fields.get(name)
        for block, reason in _unreadable_blocks(store, name):
            last = block[-1]
            if spec is not None and spec.encoding == "delta":
                # later deltas of the keyframe interval are decoded from this one
                interval = store.keyframe_interval
                last = min(store.committed, (last // interval + 1) * interval) - 1
            steps = None if numbers is None else [int(s) for s in numbers[block[0] : last + 1]]
            damage.append(Damage(name, block[0], last, steps, reason))
    return damage


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
        "path": str(path),
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
