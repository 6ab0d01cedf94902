"""The streaming recorder and its reader: round trips, resume, crash safety, bad input."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import wordybird
from wordybird import StreamingRecorder, WordybirdError, storage
from wordybird.recorder import layout
from wordybird.recorder.commit import WritableStore
from wordybird.recorder.delta import decode_run, delta_decode, delta_encode
from wordybird.recorder.format import is_recording

MODES = ["default", "compact"]


def make_step(step: int, vocab: int = 300, dim: int = 8) -> dict[str, torch.Tensor]:
    """A deterministic step with every dtype the recorder must keep bit-exact."""
    g = torch.Generator().manual_seed(step)
    emb = torch.randn(vocab, dim, generator=g).bfloat16()
    emb[0, 0] = float("nan")
    emb[1, 1] = float("inf")
    emb[2, 2] = float("-inf")
    emb[3, 3] = -0.0
    return {
        "embeddings": emb,
        "logits": torch.randn(vocab, generator=g).bfloat16(),
        "losses": torch.tensor(float("nan") if step == 0 else 1.0 / (step + 1)).bfloat16(),
        "grad_norms": torch.tensor([step * 0.5, float("nan")], dtype=torch.float32),
        "counts": torch.arange(5, dtype=torch.int64) * step,
    }


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality, NaN included (torch.equal says NaN != NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def record_steps(path: Path, steps: list[int], **kwargs: object) -> None:
    with StreamingRecorder(path, **kwargs) as rec:
        for s in steps:
            rec.record(s, make_step(s))


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_is_bit_exact(tmp_path: Path, mode: str) -> None:
    steps = [0, *range(1, 41, 2)]  # more than one keyframe interval in compact mode
    record_steps(tmp_path / "r.zarr", steps, mode=mode, metadata={"lr": 1e-3, "name": "t"})
    rec = wordybird.open(tmp_path / "r.zarr")
    assert list(rec.steps) == steps
    assert len(rec) == len(steps)
    assert rec.fields == ("embeddings", "logits", "losses", "grad_norms", "counts")
    assert rec.metadata == {"lr": 1e-3, "name": "t"}
    assert rec["embeddings"].shape == (len(steps), 300, 8)
    assert rec["embeddings"].dtype == torch.bfloat16
    assert rec["counts"].dtype == torch.int64
    for position, step in enumerate(steps):
        expected = make_step(step)
        got = rec.at_step(step)
        for field in rec.fields:
            assert same_bits(got[field], expected[field]), (field, step)
            assert same_bits(rec[field][position], expected[field])
    # slices, negative positions, random access out of order
    block = rec["embeddings"][5:19]
    for row, step in enumerate(steps[5:19]):
        assert same_bits(block[row], make_step(step)["embeddings"])
    assert same_bits(rec["logits"][-1], make_step(steps[-1])["logits"])
    assert same_bits(rec["embeddings"][3], make_step(steps[3])["embeddings"])
    assert rec["losses"][0:0].shape == (0,)


def test_bf16_arrays_declare_the_bfloat16_data_type(tmp_path: Path) -> None:
    record_steps(tmp_path / "r.zarr", [0, 1])
    for field in ("embeddings", "logits", "losses"):
        meta = json.loads((tmp_path / "r.zarr" / field / "zarr.json").read_text())
        assert meta["data_type"] == "bfloat16"
        assert any(c["name"] == "crc32c" for c in meta["codecs"])
    meta = json.loads((tmp_path / "r.zarr" / "recorded_steps" / "zarr.json").read_text())
    assert meta["data_type"] == "int64"


def test_other_zarr_readers_decode_the_default_mode(tmp_path: Path) -> None:
    """TensorStore knows the core codecs and the bfloat16 extension: it opens every bf16
    field as bfloat16 and reads our bits, for small fields (zstd, many steps a chunk), big
    ones (blosc with bit shuffle, a step cut into pieces) and a parameter's nested fields.
    (On S3: tests/test_s3.py.)"""
    ts = pytest.importorskip("tensorstore")
    path = tmp_path / "r.zarr"
    big = {s: torch.randn(70_001, 16, generator=torch.Generator().manual_seed(s)) for s in range(3)}
    with StreamingRecorder(path) as rec:
        for s in range(3):
            rec.record(
                s,
                {
                    **make_step(s),
                    "big": big[s].bfloat16(),  # 2.2 MB a step: two chunks, the last padded
                    "wte.weight/value": big[s][:40, :8].bfloat16(),
                },
            )
    meta = json.loads((path / "big" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 35_001, 16]
    with wordybird.open(path) as rec:
        bf16_fields = [f for f in rec.fields if rec.dtype(f) == torch.bfloat16]
        assert bf16_fields == ["embeddings", "logits", "losses", "big", "wte.weight/value"]
        for field in bf16_fields:
            kvstore = {"driver": "file", "path": str(path / field)}
            array = ts.open({"driver": "zarr3", "kvstore": kvstore}).result()
            assert array.dtype.name == "bfloat16", field
            data = array[: len(rec)].read().result()  # only committed positions are valid
            assert str(data.dtype) == "bfloat16"
            assert data.tobytes() == rec[field].numpy(slice(None)).tobytes(), field
    for position in range(3):
        got = torch.from_numpy(data[position].view(np.int16)).view(torch.bfloat16)
        assert same_bits(got, big[position][:40, :8].bfloat16())


def test_snapshot_is_taken_before_record_returns(tmp_path: Path) -> None:
    weight = torch.zeros(64, 4, dtype=torch.bfloat16)
    with StreamingRecorder(tmp_path / "r.zarr", queue_size=4) as rec:
        for step in range(6):
            weight.fill_(step)
            rec.record(step, {"w": weight})
            weight.fill_(-1)  # an optimizer mutating its tensors right after
    got = wordybird.open(tmp_path / "r.zarr")["w"][:]
    assert torch.equal(got, torch.arange(6, dtype=torch.bfloat16)[:, None, None].expand(6, 64, 4))


def big_step(step: int) -> dict[str, torch.Tensor]:
    """:func:`make_step` and a field over the small-field limit (a chunk per step)."""
    big = torch.randn(1100, 8, generator=torch.Generator().manual_seed(step)).bfloat16()
    return {**make_step(step), "big": big}


def stored_positions(path: Path, field: str) -> tuple[int, list[int]]:
    """(the array's length in its zarr.json, the positions whose chunks exist)."""
    meta = json.loads((path / field / "zarr.json").read_text())
    chunks = (path / field / "c").rglob("*")
    return meta["shape"][0], sorted(
        {int(p.relative_to(path / field / "c").parts[0]) for p in chunks if p.is_file()}
    )


@pytest.mark.parametrize("mode", MODES)
def test_resume_and_truncate(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path, mode=mode, metadata={"a": 1}) as rec:
        for s in range(20):
            rec.record(s, big_step(s))
    with StreamingRecorder(path, resume=True, metadata={"b": 2}) as rec:
        assert rec.last_step == 19
        with pytest.raises(WordybirdError, match="not greater than the last recorded step 19"):
            rec.record(19, big_step(19))
        rec.truncate(after_step=12)  # training resumed from the checkpoint of step 12
        assert rec.last_step == 12
        # the truncated positions are gone from the disk, not only from the header
        assert stored_positions(path, "big") == (13, list(range(13)))
        for s in range(13, 25):
            rec.record(s, big_step(s))
    rec = wordybird.open(path)
    assert list(rec.steps) == list(range(25))
    assert rec.metadata == {"a": 1, "b": 2}
    for s in (0, 12, 13, 17, 24):
        for field, value in big_step(s).items():
            assert same_bits(rec.at_step(s)[field], value), (field, s)
    assert stored_positions(path, "big") == (25, list(range(25)))


def test_a_reader_during_a_steps_writes_sees_only_complete_steps(tmp_path: Path) -> None:
    """While a step's chunks are being written, a reader opening the store sees exactly the
    steps before it, each whole: the header that commits a step comes after its chunks."""
    path = tmp_path / "r.zarr"
    seen: list[int] = []

    def read_meanwhile(point: str) -> None:
        if point.startswith("write:big/c/"):  # a chunk of the step being written
            with wordybird.open(path) as rec:
                if len(rec):
                    assert same_bits(rec["big"][-1], big_step(len(rec) - 1)["big"])
                seen.append(len(rec))

    storage.set_fault_hook(read_meanwhile)
    try:
        with StreamingRecorder(path) as rec:
            for step in range(4):
                rec.record(step, big_step(step))
    finally:
        storage.set_fault_hook(None)
    assert seen == [0, 1, 2, 3]  # step n's chunk written with n steps committed


def test_reader_sees_only_committed_steps_while_recording(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path) as writer:
        writer.record(0, make_step(0))
        writer.flush()
        reader = wordybird.open(path)
        assert list(reader.steps) == [0]
        for s in range(1, 4):
            writer.record(s, make_step(s))
        writer.flush()
        assert list(reader.steps) == [0]  # a snapshot until refreshed
        reader.refresh()
        assert list(reader.steps) == [0, 1, 2, 3]
        assert same_bits(reader["embeddings"][3], make_step(3)["embeddings"])
    # A step grown into the arrays but never committed (a writer killed mid-step) is
    # invisible to readers and cut away on resume.
    group = zarr.open_group(str(path), mode="r+")
    for name in ["recorded_steps", *reader.fields]:
        group[name].resize((5, *group[name].shape[1:]))
    group["recorded_steps"][4] = 99
    rec = wordybird.open(path)
    assert list(rec.steps) == [0, 1, 2, 3]
    assert rec.uncommitted == 1
    with StreamingRecorder(path, resume=True) as writer:
        writer.record(4, make_step(4))
    rec = wordybird.open(path)
    assert list(rec.steps) == [0, 1, 2, 3, 4]
    assert rec.uncommitted == 0


WRITER_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import time
    from test_recorder import make_step
    from wordybird import StreamingRecorder, storage
    mode, path, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"

    def slow_chunks(point):  # a step's chunk writes take most of its time: most kills land
        if point.startswith("write:") and "/c/" in point:  # among them, where a header
            time.sleep(0.02)  # written before the chunks would commit a step not yet there
    storage.set_fault_hook(slow_chunks)
    vocab, dim, queue_size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    # overwrite: a writer killed while creating the recording may leave an empty folder
    with StreamingRecorder(
        path, mode=mode, resume=resume, overwrite=not resume, queue_size=queue_size
    ) as rec:
        start = 0 if rec.last_step is None else rec.last_step + 1
        for step in range(start, 10_000):
            rec.record(step, make_step(step, vocab=vocab, dim=dim))
            print(step, flush=True)
""")

#: The killed writers' queue: a kill loses at most KILL_QUEUE_SIZE + 1 of the steps handed to
#: record() (FORMAT.md, "Commit protocol"): the one being written and those queued.
KILL_QUEUE_SIZE = 2


def check_steps(path: Path, first: int, vocab: int, dim: int) -> int:
    """Assert that the recording holds steps 0..n-1, those from ``first`` on bit-exact;
    return n."""
    rec = wordybird.open(path)
    n = len(rec)
    assert list(rec.steps) == list(range(n))
    for position in range(first, n):
        got = rec.at_step(position)
        for field, value in make_step(position, vocab=vocab, dim=dim).items():
            assert same_bits(got[field], value), (field, position)
    return n


def kill_resume_and_check(
    tmp_path: Path,
    mode: str,
    vocab: int,
    dim: int,
    kill_after: Sequence[int],
    *,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> list[int]:
    """Run a recording subprocess, SIGKILL it, reopen and check, resume the same store; repeat.

    The i-th writer is killed once it has printed ``kill_after[i]`` steps (each printed right
    after ``record()`` returned), plus a random 0..``jitter`` seconds, so that the kill lands
    anywhere in the writer thread's work rather than only between two ``record()`` calls. A
    recording already at ``tmp_path / "r.zarr"`` is resumed: calls can go on with one store.

    After each kill the steps are 0..n-1, where n is at least the number of steps printed
    minus KILL_QUEUE_SIZE + 1 (the bound FORMAT.md states), at most one more than printed,
    and never fewer than before; the steps committed since the last kill (and the last one
    before, where resuming cut) are bit-exact. At the end a resumed recorder adds a step.

    Returns, per kill, how many of the printed steps were not committed.
    """
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests=str(Path(__file__).parent)))
    path = tmp_path / "r.zarr"
    rng = rng or random.Random(0)
    lost = []
    for after in kill_after:
        resume = is_recording(path)
        before = len(wordybird.open(path)) if resume else 0
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                mode,
                str(path),
                "resume" if resume else "new",
                str(vocab),
                str(dim),
                str(KILL_QUEUE_SIZE),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        printed = []
        deadline = time.monotonic() + 300
        while len(printed) < after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:  # the writer died on its own: reported below
                break
            printed.append(int(line))
        time.sleep(rng.uniform(0, jitter))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"the writer exited with {proc.returncode}"
        printed += map(int, rest.split())  # what it printed before it died
        handed = printed[-1] + 1 if printed else before
        n = check_steps(path, max(0, before - 1), vocab, dim) if is_recording(path) else 0
        assert before <= n, f"a resume lost committed steps: {before} before, {n} after"
        assert handed - (KILL_QUEUE_SIZE + 1) <= n <= handed + 1, (
            f"{n} steps committed, {handed} handed to record(): a kill may lose at most "
            f"{KILL_QUEUE_SIZE + 1}"
        )
        lost.append(max(0, handed - n))
    with StreamingRecorder(path, resume=True) as writer:
        step = 0 if writer.last_step is None else writer.last_step + 1
        writer.record(step, make_step(step, vocab=vocab, dim=dim))
    assert check_steps(path, step, vocab, dim) == step + 1
    return lost


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_loses_only_uncommitted_steps(tmp_path: Path, mode: str) -> None:
    """Kills a little after a step was handed over (the writer's chunk writes slowed, so
    that they land inside a step's writes): what a kill leaves is committed whole."""
    kill_after = [8, 15, 11, 6]
    kill_resume_and_check(tmp_path, mode, 4000, 64, kill_after, jitter=0.12)


#: A random kill comes up to this long after the printed steps it waited for.
KILL_JITTER = 0.5


def random_kills(seed: int, count: int) -> tuple[list[int], random.Random]:
    """Kill moments for :func:`kill_resume_and_check`: after 1..12 printed steps each (plus
    up to KILL_JITTER, drawn from the same generator)."""
    rng = random.Random(seed)
    return [rng.randint(1, 12) for _ in range(count)], rng


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("vocab", "kills"), [(4000, 13), (50257, 12)])
def test_random_kills_over_the_small_field_limit(
    tmp_path: Path, mode: str, vocab: int, kills: int
) -> None:
    """50 random kills in all: both modes, [4000, 64] and the notebook's [50257, 64]."""
    kill_after, rng = random_kills(vocab + MODES.index(mode), kills)
    kill_resume_and_check(tmp_path, mode, vocab, 64, kill_after, jitter=KILL_JITTER, rng=rng)


def test_background_failure_surfaces_and_keeps_committed_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.zarr"
    rec = StreamingRecorder(path)
    for s in range(3):
        rec.record(s, make_step(s))
    rec.flush()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(WritableStore, "append", disk_full)
    rec.record(3, make_step(3))
    with pytest.raises(WordybirdError, match="No space left on device.*first 3 step"):
        for s in range(4, 10):
            rec.record(s, make_step(s))
    with pytest.raises(WordybirdError, match="No space left"):
        rec.close()
    assert list(wordybird.open(path).steps) == [0, 1, 2]


@pytest.mark.parametrize("mode", MODES)
def test_corrupted_chunk_is_reported_with_its_field_and_step(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "r.zarr"
    steps = [10, 20, 30, 40, 50]
    with StreamingRecorder(path, mode=mode) as rec:  # big enough for one chunk per step
        for s in steps:
            rec.record(s, {"w": make_step(s, vocab=4000, dim=64)["embeddings"]})
    chunk = next(p for p in (path / "w" / "c" / "2").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    rec = wordybird.open(path)
    assert same_bits(rec["w"][1], make_step(20, vocab=4000, dim=64)["embeddings"])
    # compact mode rebuilds position 4 from its keyframe through the damaged position 2
    damaged = r"field 'w' at step 30 \(position 2\) cannot be read .*checksum"
    with pytest.raises(WordybirdError, match=damaged):
        rec["w"][4 if mode == "compact" else 2]
    whole = r"'w' at (steps 10\.\.50 \(positions 0\.\.4\)|step 30 \(position 2\))"
    with pytest.raises(WordybirdError, match=whole):
        rec["w"][:]


# -- bad input -------------------------------------------------------------------------------


def test_shape_dtype_and_field_changes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path) as rec:
        rec.record(0, make_step(0))
        bad_shape = make_step(1) | {"embeddings": torch.zeros(301, 8, dtype=torch.bfloat16)}
        shape_error = r"step 1: field 'embeddings' has shape \(301, 8\)"
        with pytest.raises(WordybirdError, match=shape_error):
            rec.record(1, bad_shape)
        bad_dtype = make_step(1) | {"logits": torch.zeros(300)}
        with pytest.raises(WordybirdError, match="'logits'.*float32.*bfloat16"):
            rec.record(1, bad_dtype)
        with pytest.raises(WordybirdError, match="field.*extra.*not in the recording's first"):
            rec.record(1, make_step(1) | {"extra": torch.zeros(2)})
        missing = make_step(1)
        del missing["losses"]
        with pytest.raises(WordybirdError, match="missing field.*losses"):
            rec.record(1, missing)
        with pytest.raises(WordybirdError, match="step 0 is not greater"):
            rec.record(0, make_step(0))
        rec.record(1, make_step(1))  # a refused record leaves the recorder usable
    assert list(wordybird.open(path).steps) == [0, 1]


def test_refused_first_step_leaves_the_recorder_usable(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path) as rec:
        with pytest.raises(WordybirdError, match="written from the step argument"):
            rec.record(0, make_step(0) | {"recorded_steps": torch.zeros(2)})
        for bad in ("a//b", "a/.b", "a/__b", "/a"):
            with pytest.raises(WordybirdError, match=f"field name '{bad}' cannot be an array"):
                rec.record(0, {bad: torch.zeros(2)})
        with pytest.raises(WordybirdError, match="'a' is also the group of other fields"):
            rec.record(0, {"a": torch.zeros(2), "a/b": torch.zeros(2)})
        rec.record(0, make_step(0))
    assert wordybird.open(path).fields == tuple(make_step(0))


def test_truncate_before_any_step(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path) as rec:
        rec.truncate(after_step=3)
        assert rec.last_step is None
        rec.record(0, make_step(0))
        rec.truncate(after_step=-1)
        rec.record(1, make_step(1))
    assert list(wordybird.open(path).steps) == [1]


def test_open_ended_slices(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    record_steps(path, [0, 1, 2, 3])
    rec = wordybird.open(path)
    for field in rec.fields:
        every = rec[field][0:4]
        assert same_bits(rec.read(field, slice(2, None)), every[2:])
        assert same_bits(rec.read(field, slice(None, 2)), every[:2])
        assert same_bits(rec.read(field, slice(None, 99)), every)


def test_refresh_after_truncation_reads_the_steps_recorded_again(tmp_path: Path) -> None:
    """A live reader that refreshes after the writer truncated and re-recorded positions
    must read the new bits, not what it had decoded of the old ones."""
    path = tmp_path / "r.zarr"
    big = {"vocab": 1100, "dim": 8}  # over 16 KiB: stored as deltas in compact mode
    with StreamingRecorder(path, mode="compact") as writer:
        for s in range(20):
            writer.record(s, make_step(s, **big))
        writer.flush()
        reader = wordybird.open(path)
        assert same_bits(reader["embeddings"][10], make_step(10, **big)["embeddings"])
        writer.truncate(after_step=5)
        for s in range(6, 20):
            writer.record(s, make_step(s + 100, **big))
        writer.flush()
        reader.refresh()
        for s in (10, 11, 6, 19):  # 10 first: the reader had decoded it before
            assert same_bits(reader["embeddings"][s], make_step(s + 100, **big)["embeddings"])


class Reader(threading.Thread):
    """Reads a recording in a loop while it is written: refresh, read, refresh, check.

    A read is checked against the snapshot taken right after it: if that one still shows
    the same step number at the position, nothing replaced the position meanwhile (step
    numbers are never recorded twice in :func:`test_concurrent_readers`), so the values
    must be that step's, bit-exact. If not, a truncation raced the read, which FORMAT.md
    allows to give a mix of old and new steps, or, where it removed the position's chunks,
    a refusal that says so (never the fill value); no other error.
    """

    def __init__(
        self,
        path: Path,
        shape: dict[str, int],
        seed: int,
        pause: float,
        truncations: Callable[[], int],  # truncations begun + truncations finished
    ) -> None:
        super().__init__(name=f"reader-{seed}", daemon=True)
        self.path, self.shape, self.rng = path, shape, random.Random(seed)
        self.pause = pause  # up to this long between reading and refreshing
        self.truncations = truncations  # begun + finished: odd while one runs
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.checked = self.raced = self.cuts_seen = 0
        self.last = 0

    def run(self) -> None:
        try:
            rec = wordybird.open(self.path)
            steps, reads = rec.steps, []
            while not self.stop.is_set():
                truncations = self.truncations()
                rec.refresh()
                previous, steps = steps, rec.steps
                if self.truncations() == truncations:  # else one raced the refresh itself
                    assert (np.diff(steps) > 0).all(), steps
                self.cuts_seen += not np.array_equal(steps[: len(previous)], previous)
                self.check(reads, steps)
                reads = self.read(rec, truncations) if len(steps) else []
                self.stop.wait(self.rng.uniform(0, self.pause))
        except BaseException as exc:
            self.error = exc

    def read(
        self, rec: wordybird.Recording, truncations: int
    ) -> list[tuple[int, int, dict[str, torch.Tensor]]]:
        """First the position read last before the refresh (compact mode's decoder would
        reuse its bits if a refresh kept them), then a random position and the last one
        (the most likely to be mid-write), in order. ``truncations``: the writer's count
        before the refresh (odd while a truncation runs)."""
        n = len(rec)
        again = [self.last] if self.last < n else []
        self.last = n - 1
        reads = []
        for p in [*again, *sorted({self.rng.randrange(n), n - 1})]:
            try:
                reads.append((p, int(rec.steps[p]), {f: rec[f][p] for f in rec.fields}))
            except WordybirdError as exc:
                # a truncation that removed the position's chunks since the refresh is
                # refused, never read as zeros; any other error fails the test
                in_flight = truncations % 2 or self.truncations() != truncations
                if "removed by a truncation" not in str(exc) or not in_flight:
                    raise
                self.raced += 1
        return reads

    def check(
        self, reads: list[tuple[int, int, dict[str, torch.Tensor]]], steps: np.ndarray
    ) -> None:
        for position, step, values in reads:
            if position >= len(steps) or steps[position] != step:
                self.raced += 1
                continue
            for field, value in make_step(step, **self.shape).items():
                assert same_bits(values[field], value), (field, step, position)
            self.checked += 1


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_readers(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers never see a partial step, stale bits after a refresh, or an error, while the
    writer records, truncates, and resumes (fields over 16 KiB: chunks per step, deltas)."""
    path = tmp_path / "r.zarr"
    shape = {"vocab": 300, "dim": 64}  # [300, 64] bf16: 38 KB
    # each step of it in 3 chunks, as the notebook's [50257, 64] is in 4: a step half written
    monkeypatch.setattr(layout, "CHUNK_TARGET_BYTES", 16 << 10)
    rng = random.Random(1)
    numbers = itertools.count()  # never reused: a position re-recorded gets a new number
    recorded = [next(numbers)]
    writer = StreamingRecorder(path, mode=mode)
    writer.record(recorded[0], make_step(recorded[0], **shape))
    writer.flush()
    truncations = 0
    # one reader as fast as it goes, one pausing: a truncation and the re-recording after it
    # then fall between two of its refreshes
    readers = [
        Reader(path, shape, seed, pause, lambda: truncations) for seed, pause in enumerate([0, 0.2])
    ]
    for reader in readers:
        reader.start()
    try:
        for cycle in range(6):
            for step in itertools.islice(numbers, rng.randint(10, 20)):
                writer.record(step, make_step(step, **shape))
                recorded.append(step)
            keep = rng.choice(recorded[:-1])
            truncations += 1  # odd while a truncation runs, even once it has returned
            writer.truncate(after_step=keep)
            truncations += 1
            recorded = recorded[: recorded.index(keep) + 1]
            if cycle % 2:
                writer.close()
                writer = StreamingRecorder(path, resume=True)
    finally:
        writer.close()
        for reader in readers:
            reader.stop.set()
            reader.join(60)
    for reader in readers:
        if reader.error is not None:
            raise reader.error
        seen = (
            f"{reader.checked} reads checked, {reader.raced} raced by a truncation, "
            f"{reader.cuts_seen} truncations seen"
        )
        assert reader.checked >= 10 and reader.cuts_seen > 0, seen
    assert list(wordybird.open(path).steps) == recorded


def test_an_unclosed_recorder_commits_its_queue_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    script = textwrap.dedent("""
        import sys, time, torch
        from wordybird import StreamingRecorder
        from wordybird.recorder.commit import WritableStore

        append = WritableStore.append
        def slow_append(self, step, arrays):  # the disk is slower than training
            time.sleep(0.2)
            append(self, step, arrays)
        WritableStore.append = slow_append
        recorder = StreamingRecorder(sys.argv[1], queue_size=4)
        for step in range(4):
            recorder.record(step, {"w": torch.full((4,), float(step))})
        # the script ends without close()
    """)
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    assert list(wordybird.open(path).steps) == [0, 1, 2, 3]


def test_overwrite_replaces_only_a_recording_or_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("precious")
    monkeypatch.chdir(project)
    for target in (".", "train.py"):
        with pytest.raises(WordybirdError, match="refusing .* neither a wordybird recording"):
            StreamingRecorder(target, overwrite=True)
    assert (project / "train.py").read_text() == "precious"
    (project / "empty").mkdir()
    record_steps(project / "empty", [0], overwrite=True)
    assert list(wordybird.open(project / "empty").steps) == [0]


def test_existing_recording_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    record_steps(path, [0, 1])
    with pytest.raises(WordybirdError, match="already holds a recording"):
        StreamingRecorder(path)
    assert list(wordybird.open(path).steps) == [0, 1]
    record_steps(path, [5], overwrite=True)
    assert list(wordybird.open(path).steps) == [5]


def test_paths_that_are_not_recordings(tmp_path: Path) -> None:
    with pytest.raises(WordybirdError, match="does not exist"):
        wordybird.open(tmp_path / "missing.zarr")
    with pytest.raises(FileNotFoundError):  # as Python's own open would be caught
        wordybird.open(tmp_path / "missing.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WordybirdError, match="not a wordybird recording"):
        wordybird.open(tmp_path / "empty")
    with pytest.raises(WordybirdError, match="cannot resume"):
        StreamingRecorder(tmp_path / "empty", resume=True)
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(WordybirdError, match="not a wordybird recording"):
        wordybird.open(tmp_path / "plain.zarr")
    with pytest.raises(WordybirdError, match="folder .* does not exist"):
        StreamingRecorder(tmp_path / "no" / "such" / "r.zarr")


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    record_steps(path, [0])
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["wordybird"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WordybirdError, match="format version 99"):
        wordybird.open(path)


def test_reader_errors_name_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    record_steps(path, [0, 3])
    rec = wordybird.open(path)
    with pytest.raises(KeyError, match="no field 'nope'"):
        rec["nope"]
    with pytest.raises(KeyError, match=r"step 2 is not recorded .*0\.\.3"):
        rec.at_step(2)
    with pytest.raises(IndexError, match="position 2 is out of range"):
        rec["logits"][2]


@pytest.mark.parametrize("dtype", ["<u2", "<u4", "<u8"])
def test_compact_delta_encoding_inverts_exactly(dtype: str) -> None:
    """Compact mode's ULP deltas round-trip for every bit pattern pair, wrap-around included."""
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(0)
    now = rng.integers(0, top, 5000, dtype=dtype, endpoint=True)
    before = rng.integers(0, top, 5000, dtype=dtype, endpoint=True)
    now[:4] = [0, top, 7, 0]
    before[:4] = [top, 0, 7, 1]
    stored = delta_encode(now, before)
    assert stored.dtype == np.dtype(dtype)
    assert list(stored[:4]) == [2, 1, 0, 1]  # +1, -1, 0, -1 zigzagged
    assert np.array_equal(delta_decode(stored, before), now)


@pytest.mark.parametrize("dtype", ["<u2", "<u4"])
def test_a_keyframe_run_decodes_in_one_pass_as_step_by_step(dtype: str) -> None:
    """decode_run (a Dask chunk's decoding) equals delta_decode position after position."""
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(1)
    steps = rng.integers(0, top, (16, 300), dtype=dtype, endpoint=True)
    steps[:, :2] = [[top, 0]] * 16  # wrap-around every step
    steps[1::2, :2] = [0, top]
    stored = np.stack([steps[0], *(delta_encode(b, a) for a, b in itertools.pairwise(steps))])
    assert np.array_equal(decode_run(stored.copy()), steps)
    assert np.array_equal(decode_run(stored[:1].copy()), steps[:1])


def spy_on_puts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """(key, writing thread's name, writes in progress then) of every object put."""
    from wordybird.storage import _local

    seen: list[tuple[str, str, int]] = []
    running = [0]
    lock = threading.Lock()
    put = _local.put_file

    def spy(path: Path, parts: list[memoryview], *, durable: bool) -> None:
        with lock:
            running[0] += 1
            seen.append((path.as_posix(), threading.current_thread().name, running[0]))
        try:
            time.sleep(0.002)  # long enough for writes side by side to overlap
            put(path, parts, durable=durable)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(_local, "put_file", spy)
    return seen


@pytest.mark.parametrize("threads", [1, 3])
def test_chunks_are_encoded_on_the_codec_threads_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """One codec thread: every chunk is encoded and written in the writer's own thread, one
    at a time; three: big fields' chunks on the pool, at most three at once (the memory in
    flight is bounded by the threads, whatever the step's size)."""
    seen = spy_on_puts(monkeypatch)
    big = torch.randn(70_001, 16).bfloat16()  # 2.2 MB a step: two chunks of at most 2 MiB
    with StreamingRecorder(tmp_path / "r.zarr", codec_threads=threads) as rec:
        for step in range(3):
            rec.record(step, {**make_step(step), "a": big + step, "b": big - step})
    chunks = [(key, thread, n) for key, thread, n in seen if "/c/" in key]
    big_chunks = [c for c in chunks if "/a/c/" in c[0] or "/b/c/" in c[0]]
    assert len(big_chunks) == 3 * 2 * 2
    if threads == 1:
        assert {thread for _, thread, _ in chunks} == {"wordybird-writer"}
        assert max(n for _, _, n in chunks) == 1
    else:
        assert {thread for _, thread, _ in big_chunks} <= {
            f"wordybird-codec_{i}" for i in range(threads)
        }
        assert 1 < max(n for _, _, n in big_chunks) <= threads
    with wordybird.open(tmp_path / "r.zarr") as rec:
        for step in range(3):
            assert same_bits(rec["a"][step], big + step)
            assert same_bits(rec["b"][step], big - step)


def test_codec_threads_are_chosen_by_where_training_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from wordybird import knobs

    monkeypatch.delenv(knobs.CODEC_THREADS_VARIABLE, raising=False)
    assert knobs.codec_threads(None, on_gpu=False) == 1
    assert knobs.codec_threads(None, on_gpu=True) == knobs.available_cores()
    assert knobs.codec_threads(5, on_gpu=False) == 5
    monkeypatch.setenv(knobs.CODEC_THREADS_VARIABLE, "2")
    assert knobs.codec_threads(None, on_gpu=True) == 2
    monkeypatch.setenv(knobs.CODEC_THREADS_VARIABLE, "two")
    with pytest.raises(WordybirdError, match="WORDYBIRD_CODEC_THREADS='two'"):
        knobs.codec_threads(None, on_gpu=False)
    with pytest.raises(WordybirdError, match="codec_threads must be at least 1, got 0"):
        StreamingRecorder("unused.zarr", codec_threads=0)


def test_blosc_is_called_into_a_reused_buffer_with_numcodecs_own_bytes() -> None:
    """The writer compresses with c-blosc's own function into a buffer it reuses (numcodecs'
    encode allocates fresh pages per chunk, which cost as much as the compression). If
    numcodecs stops exporting that function the writer still works, slower: this fails so
    that someone looks."""
    import numcodecs

    from wordybird.recorder.chunks import BLOSC_COMPRESS_CTX, _BloscIntoBuffer

    assert BLOSC_COMPRESS_CTX is not None, "numcodecs' blosc no longer exports blosc_compress_ctx"
    data = (torch.randn(300_000) * 0.02).bfloat16().view(torch.int16).numpy().view(np.uint16)
    for cname, shuffle in (("lz4", 2), ("zstd", 1)):
        ours = _BloscIntoBuffer(cname.encode(), 5, shuffle, 0, 2, BLOSC_COMPRESS_CTX)
        theirs = numcodecs.Blosc(cname, 5, shuffle).encode(data)
        first = bytes(ours.encode(data))
        assert first == theirs
        assert bytes(ours.encode(data[:1000])) == numcodecs.Blosc(cname, 5, shuffle).encode(
            data[:1000]
        )  # the same buffer, a shorter chunk: only its own bytes


@pytest.mark.parametrize("mode", MODES)
def test_a_store_written_with_other_codecs_reads_and_grows_with_them(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores written before the codec choice (blosc zstd) read, and a resumed writer
    appends to each array with the codecs its zarr.json names."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    from wordybird.recorder import commit

    def zstd(spec: layout.FieldSpec) -> tuple[object, ...]:
        if spec.step_nbytes <= layout.SMALL_STEP_BYTES:
            return layout.compressors_for(spec)
        blosc = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2)
        return (blosc, Crc32cCodec())

    path = tmp_path / "r.zarr"
    with monkeypatch.context() as patched:
        patched.setattr(commit, "compressors_for", zstd)
        with StreamingRecorder(path, mode=mode) as rec:
            for step in range(18):
                rec.record(step, big_step(step))
    with StreamingRecorder(path, resume=True) as rec:
        for step in range(18, 21):
            rec.record(step, big_step(step))
    meta = json.loads((path / "big" / "zarr.json").read_text())
    assert meta["codecs"][1]["configuration"]["cname"] == "zstd"
    for step in (5, 19):  # blosc's header: bits 5-7 of its flags byte name the compressor
        flags = (path / "big" / "c" / str(step) / "0" / "0").read_bytes()[2]
        assert flags >> 5 == 4, f"step {step} was not compressed with zstd"
    with wordybird.open(path) as rec:
        for step in range(21):
            assert same_bits(rec["big"][step], big_step(step)["big"]), step
