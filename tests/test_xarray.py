"""Recording.to_xarray: a lazy, Dask-backed xarray.Dataset for every backend and both modes.

Small recordings throughout; one test starts a real two-process ``distributed`` cluster and
checks the analysis of a real tiny training run through xarray against ``wordybird analyze``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wordybird
from test_training import WORDS, config
from wordybird import StreamingRecorder, WordybirdError
from wordybird.analysis.hops import analyze
from wordybird.analysis.masks import load_masks
from wordybird.errors import DamagedRecordingError
from wordybird.recorder.format import RecordingStore
from wordybird.storage import RUN_RECORDING
from wordybird.training.config import MASKS
from wordybird.training.experiments import train
from wordybird.training.model import VOCAB_SIZE
from wordybird.xarray_adapter import dim_names

xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")

MODES = ["default", "compact"]
V, D = 1100, 8  # one [V, D] bf16 step is over 16 KiB: a big field (chunked one step each)
P = "transformer.wte.weight"  # a named parameter's fields, '/'-nested in the store
STEPS = [0, *range(1, 39, 2)]  # 20 positions: past compact mode's keyframe interval of 16


def make_step(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    emb = torch.randn(V, D, generator=g).bfloat16()
    emb[0, 0] = float("nan")
    emb[1, 1] = -0.0
    return {
        "embeddings": emb,
        "logits": torch.randn(V, generator=g).bfloat16(),
        "losses": torch.tensor(1.0 / (step + 1)).bfloat16(),
        f"{P}/value": torch.randn(12, 6, generator=g),
        f"{P}/exp_avg": torch.randn(12, 6, generator=g),
        f"{P}/rows": torch.arange(12, dtype=torch.int64) * step,
        f"{P}/lr": torch.tensor(1e-3 * step, dtype=torch.float32),
    }


def record(path: Path, mode: str = "default", steps: list[int] = STEPS) -> Path:
    with StreamingRecorder(path, mode=mode, metadata={"learning_rate": 1e-3}) as rec:
        for step in steps:
            rec.record(step, make_step(step))
    return path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run as a default and a compact store, an export and a split export."""
    root = tmp_path_factory.mktemp("recordings")
    paths = {mode: record(root / f"{mode}.zarr", mode) for mode in MODES}
    paths["safetensors"] = wordybird.export(paths["default"], root / "run.safetensors")
    split = root / "split.safetensors"
    paths["split"] = wordybird.export(paths["default"], split, steps_per_file=7)  # the index
    return paths


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", ["default", "compact", "safetensors", "split"])
def test_every_backend_gives_the_same_lazy_dataset(recordings: dict[str, Path], kind: str) -> None:
    with wordybird.open(recordings[kind]) as rec:
        ds = rec.to_xarray()
        expected = {field: rec[field].numpy(slice(None)) for field in rec.fields}
        assert list(ds.data_vars) == list(rec.fields)
    assert ds["step"].values.tolist() == STEPS
    assert ds["token"].values.tolist() == list(range(V))
    assert ds.attrs["learning_rate"] == 1e-3
    assert ds["embeddings"].dims == ("step", "token", "dim")
    assert ds["logits"].dims == ("step", "token")
    assert ds["losses"].dims == ("step",)
    assert ds[f"{P}/value"].dims == ("step", f"{P}_dim0", f"{P}_dim1")
    assert ds[f"{P}/exp_avg"].dims == ds[f"{P}/value"].dims  # one parameter's fields align
    assert ds[f"{P}/rows"].dims == ("step", f"{P}/rows_dim0")
    assert str(ds["embeddings"].dtype) == "bfloat16"
    for field, want in expected.items():
        assert isinstance(ds[field].data, da.Array)
        assert same_bits(ds[field].values, want), field  # the dataset outlives the `with`
    # step selections read through to the same bits
    assert same_bits(ds["embeddings"].sel(step=17).values, expected["embeddings"][9])
    assert same_bits(ds["logits"].isel(step=slice(3, 19, 5)).values, expected["logits"][3:19:5])
    difference = (ds[f"{P}/value"] - ds[f"{P}/exp_avg"]).isel(step=-1).values
    assert difference.shape == (12, 6)  # aligned, not broadcast against each other


@pytest.mark.parametrize(
    ("kind", "chunks"),
    [("default", (1,) * 20), ("compact", (16, 4)), ("safetensors", (1,) * 20)],
)
def test_chunks_follow_steps_keyframe_runs_and_small_fields(
    recordings: dict[str, Path], kind: str, chunks: tuple[int, ...]
) -> None:
    """A big field: one step per chunk, or one keyframe run (compact mode); small fields
    (scalars, small parameters): all steps in one chunk."""
    with wordybird.open(recordings[kind]) as rec:
        ds = rec.to_xarray()
    assert ds["embeddings"].chunks == (chunks, (V,), (D,))
    assert ds["losses"].chunks == ((20,),)
    assert ds["logits"].chunks == ((20,), (V,))  # 2.2 kB a step
    assert ds[f"{P}/value"].chunks[0] == (20,)


def test_the_dims_rule() -> None:
    shapes = {
        "embeddings": (50257, 64),
        "logits": (50257,),
        "grads": (50257, 64),
        "wpe/value": (16, 64),
        "wpe/grad": (16, 64),
        "wpe/row_var": (16,),
        "wpe/lr": (),
        "wide": (50257, 128),
        "odd": (3, 50257),
    }
    token = (50257, 64)
    names = {field: dim_names(field, shape, shapes, token) for field, shape in shapes.items()}
    assert names == {
        "embeddings": ("token", "dim"),
        "logits": ("token",),
        "grads": ("token", "dim"),
        "wpe/value": ("wpe_dim0", "wpe_dim1"),
        "wpe/grad": ("wpe_dim0", "wpe_dim1"),
        "wpe/row_var": ("wpe/row_var_dim0",),
        "wpe/lr": (),
        "wide": ("token", "wide_dim1"),  # a second axis of another width is not `dim`
        "odd": ("odd_dim0", "odd_dim1"),  # only a first axis is `token`
    }
    # without an embedding matrix, every axis is named after its owner
    assert dim_names("logits", (50257,), shapes, None) == ("logits_dim0",)


def test_token_field_and_refusals(tmp_path: Path) -> None:
    """token_field names the [vocab, dim] matrix of a parameter recording; a field named
    like a dimension and a token_field that cannot be one are refused, each with one error."""

    def parameter_recording(path: Path, **more: torch.Tensor) -> Path:
        with StreamingRecorder(path) as rec:
            for step in range(3):
                fields = {f"{P}/value": torch.randn(40, 4), f"{P}/grad": torch.randn(40, 4)}
                rec.record(step, {**fields, f"{P}/lr": torch.tensor(0.1), **more})
        return path

    bad = parameter_recording(tmp_path / "bad.zarr", dim=torch.tensor(1))
    with wordybird.open(bad) as rec, pytest.raises(WordybirdError) as error:
        rec.to_xarray()
    assert str(error.value) == (
        f"{bad}: the field 'dim' has the name of a dimension; to_xarray cannot name a variable so"
    )
    path = parameter_recording(tmp_path / "r.zarr")
    with wordybird.open(path) as rec:
        assert rec.to_xarray()[f"{P}/grad"].dims == ("step", f"{P}_dim0", f"{P}_dim1")
        ds = rec.to_xarray(token_field=f"{P}/value")
        assert ds[f"{P}/grad"].dims == ("step", "token", "dim")
        assert ds["token"].size == 40
        with pytest.raises(WordybirdError, match="has no field 'wte' to take token and dim"):
            rec.to_xarray(token_field="wte")
        with pytest.raises(WordybirdError, match=r"per-step shape \[\]; token and dim come"):
            rec.to_xarray(token_field=f"{P}/lr")


def test_only_committed_steps_are_in_the_dataset(tmp_path: Path) -> None:
    """A step written but not committed (in flight, or left by a killed writer) is left out."""
    path = record(tmp_path / "r.zarr", steps=[0, 1, 2, 3])
    header = json.loads((path / "zarr.json").read_text())
    header["attributes"]["wordybird"]["committed"] = 3
    (path / "zarr.json").write_text(json.dumps(header))
    with wordybird.open(path) as rec:
        assert rec.uncommitted == 1
        ds = rec.to_xarray()
        assert ds.sizes["step"] == 3 and ds["step"].values.tolist() == [0, 1, 2]
        assert same_bits(ds["embeddings"].values, rec["embeddings"].numpy(slice(None)))


def test_a_truncation_below_a_dataset_is_refused_when_computed(tmp_path: Path) -> None:
    path = record(tmp_path / "r.zarr", steps=[0, 1, 2, 3, 4])
    with wordybird.open(path) as rec:
        ds = rec.to_xarray()
    with StreamingRecorder(path, resume=True) as writer:
        writer.truncate(after_step=2)
    step_1 = make_step(1)["embeddings"].view(torch.int16).numpy()
    assert ds["embeddings"].isel(step=1).values.tobytes() == step_1.tobytes()
    with pytest.raises(WordybirdError, match=r"holds 3 step\(s\) now, fewer than the 5 this"):
        ds["embeddings"].values  # noqa: B018


@pytest.mark.parametrize("mode", MODES)
def test_building_the_dataset_reads_no_chunk(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building reads nothing; a damaged chunk of a later step fails only the computations
    that need its chunk (in compact mode the chunk is the keyframe run it is in)."""
    path = record(tmp_path / "r.zarr", mode)
    damaged = 17  # the position, step 33: a delta in compact mode (keyframe 16)
    chunk = path / "embeddings" / "c" / str(damaged) / "0" / "0"
    chunk.write_bytes(b"\x00" * chunk.stat().st_size)
    reads: list[object] = []
    original = RecordingStore.read_stored
    with wordybird.open(path) as rec:
        monkeypatch.setattr(
            RecordingStore,
            "read_stored",
            lambda self, name, index: reads.append((name, index)) or original(self, name, index),
        )
        ds = rec.to_xarray()
        assert reads == []
        before = ds["embeddings"].isel(step=slice(0, 16)).values
        # the tasks open the recording once (its step numbers), then read only that field:
        # one read per step, or one per keyframe run (every step decoded once)
        assert {name for name, _ in reads} == {"recorded_steps", "embeddings"}
        blocks = sorted((i.start, i.stop) for name, i in reads if name == "embeddings")
        assert blocks == ([(0, 16)] if mode == "compact" else [(p, p + 1) for p in range(16)])
        assert same_bits(before, rec["embeddings"].numpy(slice(0, 16)))
        with pytest.raises(DamagedRecordingError, match=r"'embeddings' at .*step 33"):
            ds["embeddings"].isel(step=damaged).values  # noqa: B018
        with pytest.raises(DamagedRecordingError):
            float(ds["embeddings"].astype("float32").sum())
        assert float(ds["losses"].astype("float32").sum()) > 0  # other fields still read


def test_a_missing_extra_says_what_to_install(
    recordings: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "xarray", None)
    with wordybird.open(recordings["default"]) as rec, pytest.raises(WordybirdError) as error:
        rec.to_xarray()
    assert str(error.value) == (
        "to_xarray needs xarray, which is not installed: pip install 'wordybird[xarray]'"
    )
    assert isinstance(error.value, ModuleNotFoundError)


# -- a real cluster, a real training run ----------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_training's toy corpus: a dozen words, 1500 times."""
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    picks = torch.randint(len(WORDS), (1500,), generator=torch.Generator().manual_seed(0))
    path.write_text(" ".join(WORDS[i] for i in picks.tolist()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    """Two worker processes (spawned: none has imported wordybird or registered bf16)."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


@pytest.mark.parametrize("mode", MODES)
def test_a_cluster_computes_the_untrained_tokens_displacement_as_analyze_does(
    cluster,
    corpus: Path,
    tmp_path: Path,
    mode: str,
) -> None:
    """Through xarray on two worker processes, the per-step mean displacement of the
    untrained tokens (and their hop fraction) is what ``wordybird analyze`` computes.

    A real tiny GPT-2 run, 17 steps: 18 positions, two keyframe runs in compact mode.
    """
    out = tmp_path / "run"
    train(config(corpus, steps=17, mode=mode), out)
    with wordybird.open(out / RUN_RECORDING) as rec:
        masks = load_masks(out / MASKS, VOCAB_SIZE)
        records = analyze(rec, masks).records
        ds = rec.to_xarray()
    if mode == "compact":
        assert ds["embeddings"].chunks[0] == (16, 2)
    w = ds["embeddings"].isel(token=masks.untrained.numpy()).astype("float64")
    moves = w.diff("step")  # each step minus the previous recorded step, at the later step
    displacement = np.sqrt((moves**2).sum("dim")).mean("token")
    hops = (moves != 0).mean(("token", "dim"))
    displacement, hops = cluster.compute([displacement, hops], sync=True)

    assert displacement["step"].values.tolist() == [r["step"] for r in records[1:]]
    want = [r["untrained_displacement_prev_mean"] for r in records[1:]]
    assert all(value > 0 for value in want)
    # analyze sums in float32 (every bf16 value and nearly every difference of two is exact
    # there), here in float64: equal to float32's precision
    np.testing.assert_allclose(displacement.values, want, rtol=1e-6)
    assert hops.values.tolist() == [r["untrained_hop_fraction"] for r in records[1:]]
    # and the workers' bf16 values are the recording's, bit for bit
    last = cluster.compute(ds["embeddings"].isel(step=-1), sync=True)
    with wordybird.open(out / RUN_RECORDING) as rec:
        assert same_bits(last.values, rec["embeddings"].numpy(-1))
