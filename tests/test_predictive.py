"""Predictive mode: fields stored as ULP residuals from the optimizer's update rule.

Losslessness (every step decodes bit-exactly, in every mode, through every reader), that
the residuals really are the prediction's (mostly zero, where compact's deltas are not),
that the predictor gives the same bits in another process, the fallbacks (lost steps,
unknown optimizers) and the refusals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn
from transformers import Trainer, TrainingArguments

import wordybird
from wordybird import RecorderCallback, StreamingRecorder
from wordybird.errors import DamagedRecordingError, WordybirdError
from wordybird.recorder import (
    bf16,  # noqa: F401  (registers the Zarr bfloat16 type)
    decoding,
)
from wordybird.recorder import predict as predict_module
from wordybird.recorder.check import check_recording
from wordybird.recorder.delta import delta_encode
from wordybird.recorder.predict import PREDICTOR_VERSION, Prediction, predict
from wordybird.training.data import TokenDataset
from wordybird.training.model import ModelConfig, build_model, compute_in

MODES = ("default", "compact", "predictive")
TINY = ModelConfig(n_embd=8, n_layer=1, n_head=1, n_positions=16)
STEPS = 20  # past the first keyframe interval (16)
ADAM_FIELDS = ("embeddings", "momentum", "variance")


def residuals(store: Path, field: str, position: int) -> np.ndarray:
    """The stored array of a field at a position, as Zarr holds it (bits or differences)."""
    return zarr.open_array(store / field, mode="r")[position]


# -- one real Trainer run, recorded in every mode at once ------------------------------------


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny bf16 GPT-2 trained by the Trainer (AdamW with weight decay, clipping at 1.0,
    linear decay), recorded in the notebook's layout by one callback per mode."""
    folder = tmp_path_factory.mktemp("modes")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 400, (2000,), generator=gen).tolist()
    model = compute_in(build_model(TINY, seed=3), torch.float32)
    stores = {mode: folder / f"{mode}.zarr" for mode in MODES}
    callbacks = [RecorderCallback(StreamingRecorder(stores[m], mode=m)) for m in MODES]
    args = TrainingArguments(
        output_dir=str(folder / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        optim="adamw_torch",  # wordybird train's (the Trainer's default is the fused one)
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # three callbacks of one class: transformers warns
        Trainer(
            model=model, args=args, train_dataset=TokenDataset(tokens, 16), callbacks=callbacks
        ).train()
    return stores


def test_a_run_recorded_in_each_mode_exports_the_same_bytes(
    trainer_run: dict[str, Path], tmp_path: Path
) -> None:
    exported = {}
    for mode, store in trainer_run.items():
        out = wordybird.export(store, tmp_path / f"{mode}.safetensors")
        exported[mode] = Path(out).read_bytes()
    assert exported["predictive"] == exported["default"] == exported["compact"]
    with (
        wordybird.open(trainer_run["predictive"]) as rec,
        wordybird.open(trainer_run["default"]) as raw,
    ):
        assert rec.mode == "predictive" and len(rec) == STEPS + 1
        # random access after a fresh open, the lazy Dask path, and numpy reads agree
        ds = rec.to_xarray()
        for field in (*ADAM_FIELDS, "grads"):
            assert np.array_equal(
                ds[field].values.view(np.uint16), raw[field].numpy(slice(None)).view(np.uint16)
            )
        for position in (19, 3, 17):
            fresh = wordybird.open(trainer_run["predictive"])
            assert torch.equal(
                fresh["embeddings"][position].view(torch.int16),
                raw["embeddings"][position].view(torch.int16),
            )


def test_the_optimizers_fields_are_stored_as_mostly_zero_residuals(
    trainer_run: dict[str, Path],
) -> None:
    header = json.loads((trainer_run["predictive"] / "zarr.json").read_text())["attributes"]
    fields = header["wordybird"]["fields"]
    assert header["wordybird"]["format_version"] == 2
    assert {f: fields[f]["encoding"] for f in (*ADAM_FIELDS, "grads")} == {
        "embeddings": "predicted",
        "momentum": "predicted",
        "variance": "predicted",
        "grads": "delta",
    }
    constants = fields["embeddings"]["prediction"]["constants"]
    assert constants["weight_decay"] == 0.1 and constants["step_offset"] == 0
    assert fields["momentum"]["prediction"]["constants"]["max_grad_norm"] == 1.0
    for field in ADAM_FIELDS:
        for position in (1, 5, 18):  # not keyframes
            zero = np.mean(residuals(trainer_run["predictive"], field, position) == 0)
            delta = np.mean(residuals(trainer_run["compact"], field, position) == 0)
            assert zero > 0.97, (field, position, zero)
            assert zero > delta + 0.2, (field, position, zero, delta)
        assert wordybird.open(trainer_run["predictive"]).nbytes_on_disk(field) * 2 < wordybird.open(
            trainer_run["compact"]
        ).nbytes_on_disk(field)


# -- plain loops: other optimizers, lost steps ----------------------------------------------


class Table(nn.Module):
    """A bf16 embedding table over 16 KiB (so that its fields are big), and a loss."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(1500, 8, dtype=torch.bfloat16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).float().pow(2).mean() + self.table(ids).float().mean()


def run_loop(
    tmp_path: Path, make_optimizer, *, record_every: int = 1, steps: int = STEPS
) -> dict[str, Path]:
    """A plain loop with clipping, recorded by name by one ``watch`` per mode."""
    torch.manual_seed(0)
    model = Table()
    optimizer = make_optimizer(model.parameters())
    stores = {mode: tmp_path / f"{mode}.zarr" for mode in MODES}
    runs = [
        wordybird.watch(
            model,
            optimizer,
            StreamingRecorder(stores[mode], mode=mode),
            parameters=["table.weight"],
            record_every=record_every,
            max_grad_norm=1.0,
        )
        for mode in MODES
    ]
    for _ in range(steps):
        model(torch.randint(0, 700, (64,))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for run in runs:
        run.close()
    return stores


def assert_same_recording(a: Path, b: Path) -> None:
    with wordybird.open(a) as x, wordybird.open(b) as y:
        assert x.fields == y.fields and np.array_equal(x.steps, y.steps)
        for field in x.fields:
            got, want = x[field].numpy(slice(None)), y[field].numpy(slice(None))
            assert got.tobytes() == want.tobytes(), field


@pytest.mark.parametrize(
    ("name", "make_optimizer", "predicted"),
    [
        (
            "adamw",
            lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
            ("value", "exp_avg", "exp_avg_sq"),
        ),
        (
            "sgd-nesterov",
            lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, nesterov=True),
            ("value", "momentum_buffer"),
        ),
        ("sgd", lambda p: torch.optim.SGD(p, lr=0.5), ("value",)),
    ],
)
def test_plain_loops_predict_adam_and_sgd(
    tmp_path: Path, name: str, make_optimizer, predicted: tuple[str, ...]
) -> None:
    stores = run_loop(tmp_path, make_optimizer)
    assert_same_recording(stores["predictive"], stores["default"])
    fields = json.loads((stores["predictive"] / "zarr.json").read_text())["attributes"]
    specs = fields["wordybird"]["fields"]
    assert {k.split("/")[1] for k, v in specs.items() if v["encoding"] == "predicted"} == set(
        predicted
    )
    with wordybird.open(stores["predictive"]) as rec:
        first = 1 if rec.steps[0] == 1 else 0  # SGD's first recorded step is a keyframe
        for key in predicted:
            for position in range(first + 1, 16):
                zero = np.mean(
                    residuals(stores["predictive"], f"table.weight/{key}", position) == 0
                )
                assert zero > 0.97, (name, key, position, zero)


def test_an_optimizer_without_a_rule_falls_back_to_compact_and_says_so(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no update rule of RMSprop"):
        stores = run_loop(tmp_path, lambda p: torch.optim.RMSprop(p, lr=0.01), steps=4)
    assert_same_recording(stores["predictive"], stores["default"])
    specs = json.loads((stores["predictive"] / "zarr.json").read_text())["attributes"]
    encodings = {v["encoding"] for v in specs["wordybird"]["fields"].values()}
    assert "predicted" not in encodings and "delta" in encodings


def test_lost_steps_are_stored_as_compact_deltas_never_predicted_across(tmp_path: Path) -> None:
    """record_every=2: the previous position is two optimizer steps back, so the update
    rule does not link them: each position is its delta from the previous one."""
    stores = run_loop(tmp_path, lambda p: torch.optim.AdamW(p, lr=0.05), record_every=2)
    assert_same_recording(stores["predictive"], stores["default"])
    with wordybird.open(stores["default"]) as raw:
        values = raw["table.weight/exp_avg"].numpy(slice(None)).view(np.uint16)
    for position in range(1, len(values)):
        stored = residuals(stores["predictive"], "table.weight/exp_avg", position)
        assert np.array_equal(stored, delta_encode(values[position], values[position - 1]))


# -- the writer's own chain: truncation and resume ------------------------------------------


def adam_steps(count: int) -> list[dict[str, torch.Tensor]]:
    """Real AdamW steps of a bf16 matrix with random gradients, clipped at 1.0."""
    torch.manual_seed(1)
    param = nn.Parameter(torch.randn(1200, 16).to(torch.bfloat16))
    optimizer = torch.optim.AdamW([param], lr=0.01)
    steps = []
    for _ in range(count):
        param.grad = torch.randn_like(param)
        grad = param.grad.clone()
        norm = torch.nn.utils.clip_grad_norm_([param], 1.0)
        optimizer.step()
        state = optimizer.state[param]
        steps.append(
            {
                "w": param.detach().clone(),
                "g": grad,
                "m": state["exp_avg"].clone(),
                "v": state["exp_avg_sq"].clone(),
                "lr": torch.tensor(0.01),
                "grad_norms": norm.float(),
            }
        )
    return steps


ADAM_PREDICTIONS = {
    "m": Prediction(
        "adam_exp_avg",
        {"grad": "g", "grad_norm": "grad_norms"},
        {"beta1": 0.9, "max_grad_norm": 1.0},
    ),
    "v": Prediction(
        "adam_exp_avg_sq",
        {"grad": "g", "grad_norm": "grad_norms"},
        {"beta2": 0.999, "max_grad_norm": 1.0},
    ),
    "w": Prediction(
        "adam_param",
        {"exp_avg": "m", "exp_avg_sq": "v", "lr": "lr"},
        {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "step_offset": 0},
    ),
}


def record(path: Path, steps: list[dict[str, torch.Tensor]], numbers: range, **kwargs) -> None:
    with StreamingRecorder(path, **kwargs) as rec:
        for number in numbers:
            rec.record(number, steps[number - 1], predictions=ADAM_PREDICTIONS)


def test_a_truncated_and_resumed_recording_predicts_from_the_steps_on_disk(tmp_path: Path) -> None:
    steps = adam_steps(24)
    path = tmp_path / "r.zarr"
    record(path, steps, range(1, 21), mode="predictive")
    with StreamingRecorder(path, resume=True) as rec:
        rec.truncate(9)
    record(path, steps, range(10, 25), resume=True)
    with wordybird.open(path) as rec:
        assert rec.steps.tolist() == list(range(1, 25))
        for field in ADAM_PREDICTIONS:
            want = torch.stack([s[field] for s in steps])
            assert torch.equal(rec[field][:].view(torch.int16), want.view(torch.int16))
    for position in (9, 10, 17, 23):  # the first steps after the resume are predicted too
        for field in ADAM_PREDICTIONS:
            assert np.mean(residuals(path, field, position) == 0) > 0.9, (field, position)


def test_an_export_decodes_each_predicted_step_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step of the parameter is predicted from the same step's moments, and they from its
    gradient: the export reads every big field of a step together, so each field's step is
    predicted once (read field after field, the moments and gradient were decoded again
    for every field predicted from them)."""
    steps = adam_steps(20)
    stores = {mode: tmp_path / f"{mode}.zarr" for mode in ("default", "predictive")}
    for mode, path in stores.items():
        record(path, steps, range(1, 21), mode=mode)
    predictions: list[str] = []

    def counted(prediction: Prediction, *args: object, **kwargs: bool) -> np.ndarray:
        predictions.append(prediction.rule)
        return predict(prediction, *args, **kwargs)

    monkeypatch.setattr(decoding, "predict", counted)
    out = {
        mode: wordybird.export(path, tmp_path / f"{mode}.safetensors")
        for mode, path in stores.items()
    }
    assert Path(out["predictive"]).read_bytes() == Path(out["default"]).read_bytes()
    # 20 positions, keyframes at 0 and 16: 18 predicted steps of w, m and v each
    assert sorted(predictions) == sorted(["adam_param", "adam_exp_avg", "adam_exp_avg_sq"] * 18)


def test_writing_into_a_step_read_never_changes_the_next_one(tmp_path: Path) -> None:
    """A reader keeps each field's last decoded step to decode the next from it: what it
    hands out must be the reader's own copy, or a caller's edit would leak into every
    later step of the keyframe run."""
    steps = adam_steps(8)
    stores = {mode: tmp_path / f"{mode}.zarr" for mode in MODES}
    for mode, path in stores.items():
        record(path, steps, range(1, 9), mode=mode)
    with wordybird.open(stores["default"]) as raw:
        want = {f: raw[f].numpy(slice(None)) for f in ADAM_PREDICTIONS}
    for mode in ("compact", "predictive"):
        with wordybird.open(stores[mode]) as rec:
            for position in range(8):
                for field in ADAM_PREDICTIONS:
                    got = rec[field].numpy(position)
                    assert got.tobytes() == want[field][position].tobytes(), (mode, field)
                    got[...] = 0  # the caller's to keep and change
                    rec.read(field, position).zero_()


def test_the_writer_predicts_in_its_own_thread_and_a_reader_in_parallel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training keeps every core busy, so the writer's predictions stay in its thread (two
    threads stalled the training on both cores: see ``decoding.py``); a reader waits for
    its predictions, so it spreads them over the pool."""
    pooled: list[int] = []
    real_pool = predict_module._pool

    def counted_pool():
        pooled.append(1)
        return real_pool()

    monkeypatch.setattr(predict_module, "PREDICT_BLOCK", 1 << 12)  # several blocks a step
    monkeypatch.setattr(predict_module, "_pool", counted_pool)
    path = tmp_path / "p.zarr"
    record(path, adam_steps(4), range(1, 5), mode="predictive")
    assert pooled == []
    with wordybird.open(path) as rec:
        rec["w"].numpy(3)
    assert len(pooled) == 9  # w, m and v at positions 1..3


# -- the predictor: the same bits in any process ---------------------------------------------

DETERMINISM = """
import hashlib, sys
import numpy as np
import ml_dtypes
from wordybird.recorder.predict import Prediction, predict

def inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    def tensor(scale):
        x = (rng.standard_normal(150_000) * scale).astype(np.float32)  # several blocks
        x[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40]  # zeros, infinities, NaN, subnormal
        return x.astype(dtype)
    return tensor(1.0), tensor(0.01), np.abs(tensor(1e-4)), tensor(1e-3)

digest = hashlib.sha256()
for dtype in (ml_dtypes.bfloat16, np.float16, np.float32, np.float64):
    param, grad, sq, avg = inputs(0, dtype)
    given = {"grad": grad, "grad_norm": np.float32(2.5), "exp_avg": avg, "exp_avg_sq": sq,
             "momentum_buffer": avg, "lr": np.float32(3e-3)}
    for rule, previous, constants in [
        ("adam_exp_avg", avg, {"beta1": 0.9, "max_grad_norm": 1.0}),
        ("adam_exp_avg_sq", sq, {"beta2": 0.999, "max_grad_norm": 1.0, "maximize": True}),
        ("adam_param", param, {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
                               "step_offset": 7}),
        ("sgd_momentum_buffer", avg, {"momentum": 0.9, "dampening": 0.1, "max_grad_norm": 1.0}),
        ("sgd_param", param, {"momentum": 0.9, "nesterov": True, "max_grad_norm": 1.0}),
    ]:
        out = predict(Prediction(rule, given, constants), previous, given, 12)
        assert out.dtype == previous.dtype
        digest.update(out.tobytes())
print(digest.hexdigest())
"""
#: The predictor's output on the inputs above. Any change of the arithmetic changes it, and
#: must come with a new PREDICTOR_VERSION (stores written before would no longer decode).
PREDICTOR_V1_DIGEST = "764d8fff0bae357c25f02fbf9f72607e99d6fe40579b6b91fe64e208a136c1a3"


def test_the_predictor_gives_the_same_bits_in_another_process() -> None:
    runs = [
        subprocess.run(
            [sys.executable, "-c", DETERMINISM], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert PREDICTOR_VERSION == 1 and runs[0] == PREDICTOR_V1_DIGEST


def test_a_thread_that_flushes_subnormals_is_refused_not_mispredicted() -> None:
    """Flush-to-zero arithmetic would give other bits than the reader's: refused."""
    given = {"grad": np.ones(8, np.float32)}
    prediction = Prediction("adam_exp_avg", {"grad": "g"}, {"beta1": 0.9})
    torch.set_flush_denormal(True)
    try:
        with pytest.raises(WordybirdError, match="flushes subnormals to zero"):
            predict(prediction, np.zeros(8, np.float32), given, 1)
    finally:
        torch.set_flush_denormal(False)
    assert predict(prediction, np.zeros(8, np.float32), given, 1)[0] == np.float32(0.1)


# -- refusals ---------------------------------------------------------------------------------


def test_a_prediction_from_a_field_not_recorded_is_refused(tmp_path: Path) -> None:
    steps = adam_steps(1)
    wrong = {**ADAM_PREDICTIONS, "m": Prediction("adam_exp_avg", {"grad": "nope"}, {"beta1": 0.9})}
    with (
        StreamingRecorder(tmp_path / "r.zarr", mode="predictive") as rec,
        pytest.raises(WordybirdError, match="predicted from 'nope'"),
    ):
        rec.record(1, steps[0], predictions=wrong)


def test_predictions_that_read_each_other_are_refused(tmp_path: Path) -> None:
    steps = adam_steps(1)
    cycle = {
        "m": Prediction("adam_exp_avg", {"grad": "v"}, {"beta1": 0.9}),
        "v": Prediction("adam_exp_avg_sq", {"grad": "m"}, {"beta2": 0.9}),
    }
    with (
        StreamingRecorder(tmp_path / "r.zarr", mode="predictive") as rec,
        pytest.raises(WordybirdError, match="depend on each other"),
    ):
        rec.record(1, steps[0], predictions=cycle)


def _edit_header(path: Path, edit) -> None:
    meta = path / "zarr.json"
    document = json.loads(meta.read_text())
    edit(document["attributes"]["wordybird"]["fields"])
    meta.write_text(json.dumps(document))


def test_a_store_whose_prediction_needs_a_missing_field_is_refused_not_guessed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.zarr"
    record(path, adam_steps(3), range(1, 4), mode="predictive")
    _edit_header(path, lambda f: f["w"]["prediction"]["inputs"].update(exp_avg="gone"))
    with wordybird.open(path) as rec:
        assert rec["w"].numpy(0).shape == (1200, 16)  # a keyframe needs no prediction
        with pytest.raises(WordybirdError, match="predicted from field 'gone'.*does not hold"):
            rec["w"].numpy(2)


def test_an_unknown_predictor_version_is_refused_on_open(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    record(path, adam_steps(2), range(1, 3), mode="predictive")
    _edit_header(path, lambda f: f["m"]["prediction"].update(predictor_version=99))
    with pytest.raises(WordybirdError, match="predictor version 99"):
        wordybird.open(path)


def test_a_header_whose_version_does_not_match_its_mode_is_refused(tmp_path: Path) -> None:
    """A version-1 reader would misread a predictive store: the version must say so."""
    path = tmp_path / "r.zarr"
    record(path, adam_steps(2), range(1, 3), mode="predictive")
    meta = path / "zarr.json"
    document = json.loads(meta.read_text())
    document["attributes"]["wordybird"]["format_version"] = 1
    meta.write_text(json.dumps(document))
    with pytest.raises(WordybirdError, match="format version 1 holds no 'predictive' mode"):
        wordybird.open(path)


def test_check_lists_the_predicted_fields_decoded_from_a_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    record(path, adam_steps(20), range(1, 21), mode="predictive")
    (path / "g" / "c" / "3" / "0" / "0").unlink()  # the gradient at position 3
    report = check_recording(path)
    damaged = {(d["field"], d["first_position"], d["last_position"]) for d in report["damaged"]}
    assert {("g", 3, 15), ("m", 3, 15), ("v", 3, 15), ("w", 3, 15)} <= damaged
    with wordybird.open(path) as rec:
        assert rec["w"].numpy(2) is not None and rec["w"].numpy(16) is not None
        with pytest.raises(DamagedRecordingError, match="'g'"):
            rec["w"].numpy(5)
