"""Streaming safetensors export, the lazy safetensors reader, and ``wordybird inspect``."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import wordybird
from run_cli import run_cli
from wordybird import StreamingRecorder, WordybirdError
from wordybird.export import select as export_select
from wordybird.export import writer as export_writer
from wordybird.export.layout import part_paths
from wordybird.inspection import format_report, inspect_recording

VOCAB, DIM, STEPS = 50, 4, 12
BIG_FIELDS = ("embeddings", "grads", "momentum", "variance")
SCALARS = {
    "learning_rate": 6e-4,
    "weight_decay": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "n_trained": 30,
    "n_untrained": 20,
    "starting_step": 100,
}
PROVENANCE = {"corpus_sha256": "ab" * 32, "versions": {"torch": "2.x"}, "seed": 1234}


def training_step(step: int) -> dict[str, torch.Tensor]:
    """A step in the training recording's layout; step 100 is the initial state."""
    g = torch.Generator().manual_seed(step)
    initial = step == SCALARS["starting_step"]
    emb = torch.randn(VOCAB, DIM, generator=g).bfloat16()
    emb[0, 0], emb[1, 1], emb[2, 2] = float("nan"), float("inf"), -0.0
    return {
        **{
            name: emb if name == "embeddings" else torch.randn(VOCAB, DIM, generator=g).bfloat16()
            for name in BIG_FIELDS
        },
        "logits": torch.zeros(VOCAB).bfloat16()
        if initial
        else torch.randn(VOCAB, generator=g).bfloat16(),
        "losses": torch.tensor(float("nan") if initial else 10.0 / (step - 99)).bfloat16(),
        "learning_rates": torch.tensor(6e-4 * (1 - (step - 100) / STEPS), dtype=torch.float32),
        "grad_norms": torch.tensor(float(step), dtype=torch.float32),
    }


def make_recording(path: Path, mode: str = "default", steps: int = STEPS) -> Path:
    with StreamingRecorder(path, metadata={**SCALARS, **PROVENANCE}, mode=mode) as rec:
        for step in range(100, 100 + steps):
            rec.record(step, training_step(step))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run recorded in default and compact mode (longer than a keyframe interval)."""
    root = tmp_path_factory.mktemp("stores")
    return {
        mode: make_recording(root / f"{mode}.zarr", mode, steps=20)
        for mode in ("default", "compact")
    }


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality, NaN included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.reshape(-1).view(torch.uint8).numpy().tobytes() == (
        b.reshape(-1).view(torch.uint8).numpy().tobytes()
    )


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return length, json.loads(f.read(length))


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "compact"])
@pytest.mark.parametrize(
    ("steps", "fields"),
    [
        (None, None),
        ("103:110", None),
        (":105", "embeddings,losses"),
        ("115:", None),
        ((107, 108), ["logits"]),
    ],
)
def test_round_trip_is_bit_exact(
    tmp_path: Path, stores: dict[str, Path], mode: str, steps: Any, fields: Any
) -> None:
    out = wordybird.export(stores[mode], tmp_path / "x.safetensors", steps=steps, fields=fields)
    rec = wordybird.open(stores[mode])
    start, stop = export_select.parse_steps(steps) if isinstance(steps, str) else steps or (0, 0)
    keep = (rec.steps >= (start or 0)) & (rec.steps < (stop or 10**9))
    positions = np.flatnonzero(keep)
    wanted = rec.fields if fields is None else export_select.select_fields(rec, fields)
    loaded = load_file(out)
    assert set(loaded) == {"recorded_steps", *wanted, *SCALARS}
    assert loaded["recorded_steps"].tolist() == rec.steps[positions].tolist()
    with safe_open(str(out), framework="pt") as lazy:
        for field in wanted:
            expected = rec[field][int(positions[0]) : int(positions[-1]) + 1]
            assert same_bits(loaded[field], expected), field
            assert same_bits(lazy.get_slice(field)[1:], expected[1:]), field
        assert lazy.metadata() == {key: json.dumps(value) for key, value in PROVENANCE.items()}


def test_header_is_the_notebooks_layout(tmp_path: Path, stores: dict[str, Path]) -> None:
    out = wordybird.export(stores["default"], tmp_path / "x.safetensors")
    length, header = read_header(out)
    assert length % 8 == 0
    n = 20
    expected = {
        "recorded_steps": ("I64", [n]),
        **{name: ("BF16", [n, VOCAB, DIM]) for name in BIG_FIELDS},
        "logits": ("BF16", [n, VOCAB]),
        "losses": ("BF16", [n]),
        "learning_rates": ("F32", [n]),
        "grad_norms": ("F32", [n]),
        **{name: ("F32", []) for name in ("learning_rate", "weight_decay", "adam_beta1")},
        "adam_beta2": ("F32", []),
        **{name: ("I64", []) for name in ("n_trained", "n_untrained", "starting_step")},
    }
    metadata = header.pop("__metadata__")
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == expected
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # no gaps
    assert out.stat().st_size == 8 + length + spans[-1][1]
    assert {k: json.loads(v) for k, v in metadata.items()} == PROVENANCE
    scalars = load_file(out)
    assert scalars["learning_rate"].item() == pytest.approx(6e-4)
    assert scalars["starting_step"].item() == 100


@pytest.mark.parametrize(("steps", "rows"), [(None, slice(0, 5)), ("102:104", slice(2, 4))])
def test_export_is_byte_for_byte_what_save_file_writes(
    tmp_path: Path, steps: str | None, rows: slice
) -> None:
    """The notebook's scheme (everything in RAM, save_file) and the stream give one file:
    all steps, and a range whose rows in the file are not its positions in the store."""
    store = tmp_path / "r.zarr"
    g = torch.Generator().manual_seed(0)
    with StreamingRecorder(store, metadata={**SCALARS, "seed": 7}) as rec:
        for step in range(100, 105):  # "big": over the small-field size, read step by step
            rec.record(step, {**training_step(step), "big": torch.randn(1100, 8, generator=g)})
    out = wordybird.export(store, tmp_path / "stream.safetensors", steps=steps)
    rec = wordybird.open(store)
    in_ram = {
        "recorded_steps": torch.from_numpy(rec.steps[rows].copy()),
        **{field: rec[field][rows] for field in rec.fields},
        **{
            k: torch.tensor(v, dtype=torch.float32 if isinstance(v, float) else torch.long)
            for k, v in SCALARS.items()
        },
    }
    save_file(in_ram, str(tmp_path / "ram.safetensors"), metadata={"seed": "7"})
    assert out.read_bytes() == (tmp_path / "ram.safetensors").read_bytes()


QUICK_VERIFICATION = """
print(f"\\n{'='*80}")
print(f"QUICK VERIFICATION")
print(f"{'='*80}\\n")

embeddings = recorded_data['embeddings']
losses = recorded_data['losses']

print(f"Data shapes:")
print(f"  embeddings: {embeddings.shape}")
print(f"  losses: {losses.shape}")
print()

# Analyze untrained token movement
W_step100 = embeddings[0, untrained_indices].float()  # Initial (from checkpoint)
W_step200 = embeddings[-1, untrained_indices].float()  # Final

# Compute displacements
displacements = torch.norm(W_step200 - W_step100, dim=1)
max_displacement = displacements.max().item()
mean_displacement = displacements.mean().item()
median_displacement = displacements.median().item()

print(f"Untrained token displacement (steps 100 → 200):")
print(f"  Max: {max_displacement:.2e}")
print(f"  Mean: {mean_displacement:.2e}")
print(f"  Median: {median_displacement:.2e}")
print()

# Compare to WB1 step 0 → 100 for context
if mean_displacement < 1e-4:
    print(f"  → FROZEN (mean displacement < 1e-4)")
    print(f"  → Supports WB1 freeze hypothesis!")
else:
    print(f"  → STILL MOVING (mean displacement ≥ 1e-4)")
    print(f"  → Freeze continues past step 100")

print()
print(f"Loss trajectory:")
print(f"  Step 101: {losses[1].float().item():.4f}")
print(f"  Step 200: {losses[-1].float().item():.4f}")
print(f"  Change: {(losses[-1].float() - losses[1].float()).item():+.4f}")

print(f"\\n{'='*80}")
"""


def test_notebooks_quick_verification_cell_runs_on_the_export(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    out = wordybird.export(stores["default"], tmp_path / "x.safetensors")
    untrained_mask = torch.zeros(VOCAB, dtype=torch.bool)
    untrained_mask[3:23] = True  # rows 0-2 hold NaN/inf on purpose
    namespace = {
        "torch": torch,
        "recorded_data": load_file(out),
        "untrained_indices": torch.nonzero(untrained_mask).squeeze(1),
    }
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(QUICK_VERIFICATION, namespace)
    text = printed.getvalue()
    assert f"embeddings: torch.Size([20, {VOCAB}, {DIM}])" in text
    losses = wordybird.open(stores["default"])["losses"]
    assert f"Step 101: {losses[1].float().item():.4f}" in text
    assert f"Step 200: {losses[-1].float().item():.4f}" in text
    assert "STILL MOVING" in text


def test_default_and_compact_stores_export_the_same_bytes(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    a = wordybird.export(stores["default"], tmp_path / "a.safetensors", steps="101:117")
    b = wordybird.export(stores["compact"], tmp_path / "b.safetensors", steps="101:117")
    assert a.read_bytes() == b.read_bytes()


# -- reading the file back --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "compact"])
def test_open_on_the_file_equals_open_on_the_store(
    tmp_path: Path, stores: dict[str, Path], mode: str
) -> None:
    out = wordybird.export(stores[mode], tmp_path / "x.safetensors")
    with wordybird.open(stores[mode]) as store, wordybird.open(out) as file:
        assert file.format == "safetensors"
        assert np.array_equal(file.steps, store.steps)
        assert sorted(file.fields) == sorted(store.fields)
        assert file.metadata == store.metadata  # scalars included, as Python numbers
        for field in store.fields:
            assert file[field].shape == store[field].shape
            assert file.dtype(field) == store.dtype(field)
            for i in range(len(store)):
                assert same_bits(file[field][i], store[field][i]), (field, i)
            assert same_bits(file[field][3:9], store[field][3:9])
            assert same_bits(file[field][-2:], store[field][-2:])
        assert same_bits(file.at_step(107)["momentum"], store.at_step(107)["momentum"])


def test_an_export_can_be_exported_again(tmp_path: Path, stores: dict[str, Path]) -> None:
    first = wordybird.export(stores["default"], tmp_path / "a.safetensors", steps="105:110")
    again = wordybird.export(first, tmp_path / "b.safetensors")
    assert again.read_bytes() == first.read_bytes()


def test_files_that_are_not_exports(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(WordybirdError, match="not a readable safetensors file"):
        wordybird.open(garbage)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WordybirdError, match="not a readable safetensors file"):
        wordybird.open(empty)
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(weights))
    with pytest.raises(WordybirdError, match="not a recording"):
        wordybird.open(weights)


# -- atomicity --------------------------------------------------------------------------------

HANGING_EXPORT = textwrap.dedent("""
    import os, sys, time
    from wordybird.export import writer
    store, out, target, hang_at, steps_per_file = sys.argv[1:]
    writes = 0
    write = writer._write
    def write_then_hang(fd, offset, data, progress):  # at the hang_at-th write into target
        global writes
        written = write(fd, offset, data, progress)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name == target or name.startswith(f".{target}."):  # itself, or its temporary
            writes += 1
            if writes == int(hang_at):
                print("hanging", flush=True)
                time.sleep(600)
        return written
    writer._write = write_then_hang
    writer.EXPORT_BLOCK_BYTES = 1  # one step per block: many writes
    writer.export_safetensors(store, out, steps_per_file=int(steps_per_file) or None)
""")


@pytest.mark.parametrize(
    ("steps_per_file", "target", "hang_at", "complete"),
    [
        (None, "x.safetensors", 10, 0),  # well into the data, far from the end
        (6, "x-00002-of-00004.safetensors", 10, 1),  # the second of 4 files
        (6, "x.safetensors.index.json", 1, 4),  # every file, the index not renamed yet
    ],
)
def test_kill_9_during_an_export_leaves_only_complete_files_under_final_names(
    tmp_path: Path,
    stores: dict[str, Path],
    steps_per_file: int | None,
    target: str,
    hang_at: int,
    complete: int,
) -> None:
    out = tmp_path / "out" / "x.safetensors"
    out.parent.mkdir()
    args = [stores["default"], out, target, hang_at, steps_per_file or 0]
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_EXPORT, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "hanging\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # under a final name only complete files (the same bytes as an uninterrupted export
    # writes, checked below), and never the index before them; the rest is hidden
    finals = part_paths(out, 4)[:complete] if steps_per_file else []
    left = sorted(out.parent.iterdir())
    assert [p for p in left if not p.name.startswith(".")] == finals
    assert [p.name.startswith(f".{target}.") for p in left if p not in finals] == [True]
    written = {path: path.read_bytes() for path in finals}
    # the next export to that name completes and clears the dead process's leftover
    index = wordybird.export(
        stores["default"], out, steps_per_file=steps_per_file, overwrite=bool(steps_per_file)
    )
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert all(path.read_bytes() == data for path, data in written.items())
    assert wordybird.open(index).steps.tolist() == list(range(100, 120))


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_export_cleans_up(
    tmp_path: Path, stores: dict[str, Path], error: type[BaseException]
) -> None:
    out = tmp_path / "out" / "x.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"previous export")
    written = []

    def progress(n: int) -> None:
        written.append(n)
        if len(written) == 5:
            raise error("interrupted")

    with pytest.raises(error):
        wordybird.export(stores["default"], out, overwrite=True, progress=progress)
    assert [p.name for p in out.parent.iterdir()] == ["x.safetensors"]
    assert out.read_bytes() == b"previous export"  # replaced only by a complete file


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(tmp_path: Path, stores: dict[str, Path]) -> None:
    store, out = stores["default"], tmp_path / "x.safetensors"
    empty = tmp_path / "empty.zarr"
    StreamingRecorder(empty, metadata=SCALARS).close()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"recording_or_path": empty}, "no committed step"),
        ({"steps": "0:105"}, r"reaches outside .* \(recorded steps are 100\.\.119\)"),
        ({"steps": "110:121"}, "reaches outside"),
        ({"steps": "105:105"}, "holds no recorded step"),
        ({"steps": "105"}, "START:STOP"),
        ({"steps": "a:b"}, "integer step numbers"),
        ({"fields": "embeddings,weights"}, "no field 'weights'"),
        ({"out": tmp_path / "missing" / "x.safetensors"}, "folder .*missing does not exist"),
        ({"out": tmp_path}, "is a folder"),
        ({"recording_or_path": tmp_path / "nothing.zarr"}, "does not exist"),
    ]
    for kwargs, message in cases:
        args = {"recording_or_path": store, "out": out, **kwargs}
        with pytest.raises(WordybirdError, match=message):
            wordybird.export(args.pop("recording_or_path"), args.pop("out"), **args)
        assert not out.exists()
    out.write_bytes(b"keep me")
    with pytest.raises(WordybirdError, match="already exists; pass --overwrite"):
        wordybird.export(store, out)
    assert out.read_bytes() == b"keep me"


def test_not_enough_disk_space_is_refused_before_writing(
    tmp_path: Path, stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = len(wordybird.export(stores["default"], tmp_path / "full.safetensors").read_bytes())

    def disk_usage(path: str) -> Any:
        return type("Usage", (), {"total": 10**9, "used": 10**9, "free": size - 1})()

    monkeypatch.setattr(export_writer.shutil, "disk_usage", disk_usage)
    with pytest.raises(WordybirdError, match=f"needs {size:,} bytes"):
        wordybird.export(stores["default"], tmp_path / "x.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.safetensors"]


# -- inspect and the CLI ----------------------------------------------------------------------


def test_inspect_reports_layout_sizes_and_loss(tmp_path: Path) -> None:
    store = make_recording(tmp_path / "r.zarr")
    # a step grown into the arrays but never committed, as a killed writer leaves it
    group = zarr.open_group(str(store), mode="r+")
    for name in ["recorded_steps", *wordybird.open(store).fields]:
        group[name].resize((STEPS + 1, *group[name].shape[1:]))
    report = inspect_recording(store)
    assert report["format"] == "zarr" and report["mode"] == "default"
    assert report["steps"] == {"count": STEPS, "first": 100, "last": 100 + STEPS - 1}
    assert (report["committed"], report["uncommitted"]) == (STEPS, 1)
    fields = {f["name"]: f for f in report["fields"]}
    assert fields["embeddings"]["shape"] == [STEPS, VOCAB, DIM]
    assert fields["embeddings"]["dtype"] == "bfloat16"
    assert fields["embeddings"]["raw_bytes"] == STEPS * VOCAB * DIM * 2
    ratio = fields["grads"]["raw_bytes"] / fields["grads"]["bytes_on_disk"]
    assert fields["grads"]["compression_ratio"] == pytest.approx(ratio)
    losses = [training_step(s)["losses"].item() for s in range(101, 100 + STEPS)]
    assert report["loss"]["first"] == {"step": 101, "value": losses[0]}  # NaN step 100 skipped
    assert report["loss"]["last"] == {"step": 100 + STEPS - 1, "value": losses[-1]}
    assert report["loss"]["min"]["value"] == min(losses)
    text = format_report(report)
    assert "1 in progress or left by a crash" in text and "x)" in text

    out = wordybird.export(store, tmp_path / "x.safetensors")
    exported = inspect_recording(out)
    assert exported["format"] == "safetensors"
    assert exported["size_on_disk"] == out.stat().st_size
    assert exported["loss"] == report["loss"]
    assert exported["metadata"]["n_trained"] == 30


def test_cli_export_and_inspect(tmp_path: Path, stores: dict[str, Path]) -> None:
    out = tmp_path / "x.safetensors"
    result = run_cli("export", str(stores["compact"]), str(out), "--steps", "102:110", "-q")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert load_file(out)["recorded_steps"].tolist() == list(range(102, 110))

    result = run_cli("inspect", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps"] == {"count": 8, "first": 102, "last": 109}
    result = run_cli("inspect", str(stores["compact"]))
    assert result.returncode == 0, result.stderr
    assert "zarr (compact mode)" in result.stdout and "20 recorded, 100..119" in result.stdout

    failures = [
        ("export", str(stores["compact"]), str(out)),  # exists
        ("export", str(stores["compact"]), str(tmp_path / "y.safetensors"), "--steps", "0:5"),
        ("export", str(stores["compact"]), str(tmp_path / "y.safetensors"), "--fields", "nope"),
        ("inspect", str(tmp_path / "nothing")),
    ]
    exported = out.read_bytes()
    for args in failures:
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, args
        assert len(result.stderr.splitlines()) == 1, result.stderr
    assert out.read_bytes() == exported and not (tmp_path / "y.safetensors").exists()
    result = run_cli("export", str(stores["compact"]), str(out), "--overwrite", "-q")
    assert result.returncode == 0, result.stderr
    assert load_file(out)["recorded_steps"].tolist() == list(range(100, 120))


def test_export_help_says_stop_is_excluded() -> None:
    result = run_cli("export", "--help")
    assert result.returncode == 0
    assert "STOP excluded" in " ".join(result.stdout.split())


def test_progress_counts_every_byte(tmp_path: Path, stores: dict[str, Path]) -> None:
    written: list[int] = []
    out = wordybird.export(stores["default"], tmp_path / "x.safetensors", progress=written.append)
    assert sum(written) == out.stat().st_size


def test_reading_inspecting_checking_and_exporting_never_import_torch_or_dask(
    tmp_path: Path, stores: dict[str, Path]
) -> None:
    """The light read path, run for real in a fresh process: neither torch nor xarray/dask
    (the ``[xarray]`` extra, only for ``to_xarray``) is ever imported."""
    code = textwrap.dedent("""
        import sys
        import wordybird
        wordybird.WordybirdError
        light = "zarr" not in sys.modules
        from wordybird.inspection import inspect_recording
        from wordybird.recorder.check import check_recording
        store, out = sys.argv[1:]
        inspect_recording(store)
        assert not check_recording(store)["damaged"]
        wordybird.export(store, out, steps_per_file=7)
        with wordybird.open(out) as rec:
            assert rec["embeddings"].numpy(-1).dtype.name == "bfloat16"
        heavy = [m for m in ("torch", "xarray", "dask", "distributed") if m in sys.modules]
        print(light, heavy)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code, str(stores["compact"]), str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["True", "[]"], result.stderr
