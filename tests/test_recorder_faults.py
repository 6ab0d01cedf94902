"""The commit protocol under injected faults: a process killed, or the disk full, at each of
its points (``wordybird.storage.fault_point``), in both modes; then reopen, check, resume,
check.

Random ``kill -9`` rarely lands inside the few milliseconds of a protocol step, so every
point is hit on purpose. Kills are real process deaths: a child forked from a forkserver
(which has torch and zarr imported already, so a child costs ~0.1 s rather than a fresh
interpreter's 2 s) records and calls ``os._exit`` at the chosen point, with no cleanup.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import torch

import wordybird
from test_recorder import same_bits
from wordybird import StreamingRecorder, WordybirdError, storage
from wordybird.storage import _local

MODES = ["default", "compact"]
#: [130, 64] bf16 is 16,640 bytes, just over layout.SMALL_STEP_BYTES: one chunk per step,
#: stored as deltas between keyframes in compact mode.
SHAPE = (130, 64)
#: Steps a child records: past the keyframe at position 16, into its deltas.
STEPS = 20
#: Steps the parent records after resuming.
MORE = 3
#: A child's exit code when it died at the fault point (Python's own errors exit with 1).
KILLED = 77

_forkserver = multiprocessing.get_context("forkserver")
# What this module imports (the server cannot import the module itself: it does not get
# pytest's sys.path), so that a child only has this module's own lines to run.
_forkserver.set_forkserver_preload(["pytest", "torch", "wordybird.recorder"])


def fault_step(step: int) -> dict[str, torch.Tensor]:
    """Two fields over the small-field limit (so chunks, keyframes and deltas run), a scalar;
    one of them in a group of its own (``p/b``: a parameter's fields are nested)."""
    g = torch.Generator().manual_seed(1000 + step)
    a = torch.randn(SHAPE, generator=g).bfloat16()
    a[0, 0] = float("nan")
    return {
        "a": a,
        "p/b": (torch.randn(SHAPE, generator=g) * 1e-3).bfloat16(),
        "loss": torch.tensor(1.0 / (step + 1)).bfloat16(),
    }


def at(point: str, occurrence: int, action: Callable[[], None]) -> Callable[[str], None]:
    """A ``fault_point`` replacement that runs ``action`` at the occurrence-th ``point``."""
    seen = 0

    def hook(name: str) -> None:
        nonlocal seen
        if name == point:
            seen += 1
            if seen == occurrence:
                action()

    return hook


def die() -> None:
    os._exit(KILLED)


def stage(path: str, mode: str, scenario: str, point: str, occurrence: int) -> None:
    """In a child process: ``scenario``, dying at the occurrence-th ``point``.

    ``record``: create (or resume) the recording and record up to ``STEPS``, the fault armed
    from the start (a resume's clean-up comes first). ``truncate``: record ``STEPS`` steps,
    then with the fault armed truncate after step 9.
    """
    kill = at(point, occurrence, die)
    if scenario == "record":
        storage.set_fault_hook(kill)
        with StreamingRecorder(path, mode=mode, resume=Path(path).exists()) as rec:
            start = 0 if rec.last_step is None else rec.last_step + 1
            for step in range(start, STEPS):
                rec.record(step, fault_step(step))
    else:
        with StreamingRecorder(path, mode=mode) as rec:
            for step in range(STEPS):
                rec.record(step, fault_step(step))
            rec.flush()
            storage.set_fault_hook(kill)
            rec.truncate(after_step=9)


def check_recording(path: Path, count: int) -> None:
    """Exactly steps 0..count-1, bit-exact."""
    rec = wordybird.open(path)
    assert list(rec.steps) == list(range(count))
    for position in range(count):
        for field, value in fault_step(position).items():
            assert same_bits(rec[field][position], value), (field, position)


# (scenario, point, occurrence) stages run in turn, each killed there; then the steps that
# must be committed. Positions: 16 is a keyframe, 17 a delta in compact mode.
KILLS = {
    # the first step: its arrays are created before the header names them
    "first-array": ([("record", "create_array", 1)], 0),
    "between-arrays": ([("record", "create_array", 3)], 0),
    "arrays-created": ([("record", "resize", 1)], 0),
    "first-resized": ([("record", "resized", 1)], 0),
    "first-chunk": ([("record", "write:p/b/c/0/0/0", 1)], 0),
    "before-first-header": ([("record", "commit", 1)], 0),
    "after-first-header": ([("record", "committed", 1)], 1),
    # later steps
    "before-resize": ([("record", "resize", 17)], 16),
    "during-resize": ([("record", "write:loss/zarr.json", 4)], 2),
    "after-resize": ([("record", "resized", 18)], 17),
    "between-chunks": ([("record", "write:p/b/c/17/0/0", 1)], 17),
    "before-header": ([("record", "commit", 17)], 16),
    "during-header": ([("record", "write:zarr.json", 18)], 16),
    "after-header": ([("record", "committed", 18)], 18),
    # a resume's clean-up, killed in turn
    "resume-removing-arrays": (
        [("record", "resize", 1), ("record", "remove_orphan", 2)],
        0,
    ),
    "resume-shrinking": ([("record", "commit", 6), ("record", "shrink", 2)], 5),
    # truncation (of 20 steps to 10)
    "truncate-header": ([("truncate", "write:zarr.json", 1)], STEPS),
    "truncate-uncommitted": ([("truncate", "truncate", 1)], 10),
    "truncate-shrinking": ([("truncate", "shrink", 2)], 10),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", KILLS)
def test_kill_at_every_protocol_point(tmp_path: Path, mode: str, case: str) -> None:
    stages, committed = KILLS[case]
    path = tmp_path / "r.zarr"
    for scenario, point, occurrence in stages:
        args = (str(path), mode, scenario, point, occurrence)
        child = _forkserver.Process(target=stage, args=args)
        child.start()
        child.join(60)
        assert child.exitcode == KILLED, f"{scenario} never reached {point} #{occurrence}"
    check_recording(path, committed)
    with StreamingRecorder(path, resume=True) as rec:
        assert rec.committed == committed
        for step in range(committed, committed + MORE):
            rec.record(step, fault_step(step))
    check_recording(path, committed + MORE)
    rec = wordybird.open(path)
    assert rec.mode == mode
    assert rec.uncommitted == 0
    assert {p.name for p in path.iterdir()} == {"a", "p", "loss", "recorded_steps", "zarr.json"}
    assert {p.name for p in (path / "p").iterdir()} == {"b", "zarr.json"}


# -- a full disk ----------------------------------------------------------------------------


def disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


class Disk:
    """The recording's disk, made to fill up at a chosen protocol point."""

    def full_at(self, point: str, occurrence: int) -> None:
        """The write (or step) at the occurrence-th ``point`` fails with ENOSPC."""
        storage.set_fault_hook(at(point, occurrence, disk_full))

    def space_is_back(self) -> None:
        storage.set_fault_hook(None)


@pytest.fixture
def disk() -> Disk:
    return Disk()


@pytest.fixture(autouse=True)
def no_fault_left_behind() -> Iterator[None]:
    """Every test's fault hook ends with it."""
    yield
    storage.set_fault_hook(None)


# (point, occurrence) where the disk fills up while recording steps 0..7, and the steps
# committed by then
DISK_FULL = {
    "creating-arrays": ("write:p/b/zarr.json", 1, 0),
    "growing-an-array": ("write:loss/zarr.json", 4, 2),
    "writing-a-chunk": ("write:a/c/3/0/0", 1, 3),
    # zarr.json is written by the group's creation, then by each commit: #5 commits step 3
    "writing-the-header": ("write:zarr.json", 5, 3),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", DISK_FULL)
def test_disk_full_while_recording(tmp_path: Path, mode: str, case: str, disk: Disk) -> None:
    point, occurrence, committed = DISK_FULL[case]
    path = tmp_path / "r.zarr"
    disk.full_at(point, occurrence)
    rec = StreamingRecorder(path, mode=mode)
    message = rf"No space left on device; the first {committed} step\(s\) are committed"
    with pytest.raises(WordybirdError, match=message):
        for step in range(8):
            rec.record(step, fault_step(step))
        rec.flush()
    assert rec.committed == committed
    with pytest.raises(WordybirdError, match=message):
        rec.close()
    rec.close()  # closed: nothing more to report
    check_recording_then_resume(path, committed, disk)


def check_recording_then_resume(path: Path, committed: int, disk: Disk) -> None:
    """The steps committed before the disk filled up are intact, and once there is space
    again a resumed recorder continues after them."""
    rec = wordybird.open(path)
    assert list(rec.steps) == list(range(committed))
    for position in range(committed):
        assert same_bits(rec["a"][position], fault_step(position)["a"])
    disk.space_is_back()
    with StreamingRecorder(path, resume=True) as writer:
        for step in range(committed, committed + MORE):
            writer.record(step, fault_step(step))
    check_recording(path, committed + MORE)


def test_a_failed_write_leaves_no_write_running(
    tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one of a step's writes fails, its other writes end before the error is reported:
    none lands later, behind the back of a caller that already resumed or gave up."""
    path = tmp_path / "r.zarr"
    slow = "p/b/c/3/0/0"
    put = _local.put_file

    def slow_put(target: Path, parts: list[memoryview], *, durable: bool) -> None:
        if target.as_posix().endswith(slow):
            time.sleep(0.3)
        put(target, parts, durable=durable)

    monkeypatch.setattr(_local, "put_file", slow_put)
    disk.full_at("write:a/c/3/0/0", 1)
    rec = StreamingRecorder(path, codec_threads=2)  # the step's chunks written side by side
    with pytest.raises(WordybirdError, match="No space left on device"):
        for step in range(5):
            rec.record(step, fault_step(step))
        rec.flush()
    assert (path / slow).is_file()
    with pytest.raises(WordybirdError, match="No space left on device"):
        rec.close()


@pytest.mark.parametrize("mode", MODES)
def test_disk_full_while_truncating(tmp_path: Path, mode: str, disk: Disk) -> None:
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path, mode=mode) as rec:
        for step in range(6):
            rec.record(step, fault_step(step))
        rec.flush()
        disk.full_at("write:zarr.json", 1)
        with pytest.raises(WordybirdError, match=r"truncating .* first 6 step\(s\) are committed"):
            rec.truncate(after_step=2)
        assert rec.committed == 6
        assert rec.last_step == 5
        disk.space_is_back()
        rec.truncate(after_step=2)
        for step in range(3, 6):
            rec.record(step, fault_step(step))
    check_recording(path, 6)


def test_disk_full_while_resuming(tmp_path: Path, disk: Disk) -> None:
    path = tmp_path / "r.zarr"
    disk.full_at("write:zarr.json", 4)  # the commit of step 2: its chunks stay, uncommitted
    with (
        pytest.raises(WordybirdError, match=r"first 2 step\(s\)"),
        StreamingRecorder(path) as rec,
    ):
        for step in range(4):
            rec.record(step, fault_step(step))
    assert wordybird.open(path).uncommitted == 1
    disk.full_at("shrink", 2)
    with pytest.raises(WordybirdError, match=r"resuming .*No space left.* first 2 step\(s\)"):
        StreamingRecorder(path, resume=True)
    check_recording_then_resume(path, 2, disk)


# -- durability -----------------------------------------------------------------------------


def test_durable_flushes_each_step_before_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file is fsynced before its rename; every folder holding a step's new files
    before the header that commits the step; the header's folder right after it."""
    path = tmp_path / "r.zarr"
    events: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), path)
        # a file's temporary: zarr names it like the file, its suffix replaced
        events.append(("fsync", re.sub(r"\.[0-9a-f]{32}\.partial$", "", target)))
        real_fsync(fd)

    def note(point: str) -> None:
        if point.startswith("write:"):
            key = Path(point.removeprefix("write:"))
            events.append(("write", key.with_suffix("").as_posix()))

    monkeypatch.setattr(os, "fsync", fsync)
    storage.set_fault_hook(note)
    with StreamingRecorder(path, durable=True, mode="compact") as rec:
        for step in range(3):
            rec.record(step, fault_step(step))
    assert ("fsync", "..") in events[:4]  # the recording's name in its parent folder
    headers = [i for i, event in enumerate(events) if event == ("write", "zarr")]
    assert len(headers) == 4  # creation, then 3 commits
    for header in headers:
        assert events[header + 1 : header + 3] == [("fsync", "zarr"), ("fsync", ".")]
    for before, header in pairwise(headers):
        written = {key for kind, key in events[before + 3 : header] if kind == "write"}
        synced = {key for kind, key in events[before + 3 : header] if kind == "fsync"}
        folders = {p.as_posix() for key in written for p in Path(key).parents}
        assert any(key.startswith("p/b/c/") for key in written)
        assert written | folders <= synced, (written | folders) - synced
    check_recording(path, 3)

    events.clear()
    with StreamingRecorder(tmp_path / "fast.zarr") as rec:
        rec.record(0, fault_step(0))
    assert not [event for event in events if event[0] == "fsync"]
