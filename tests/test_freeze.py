"""Is a bf16 run frozen? ``wordybird analyze`` on recordings by name, and the live monitor.

What is checked against what:

- a tiny model trained in pure bf16 (bf16 parameters, AdamW on them) with a learning rate
  decaying to 1e-8, recorded by ``watch``: each parameter's freeze step from the analysis
  against the one computed here from the recorded values, its cause (rounding), the
  monitor's warning (within ``patience`` recorded steps of it) and its recorded
  ``<name>/moved`` against the exact fractions; the same run with fp32 parameters is never
  called frozen and never warns;
- SGD with momentum predicted (agreement with the observed moves), RMSprop observed only
  (and said so), a zero learning rate and an unused parameter told apart from rounding;
- the same run in every mode, its export and its split export: the same analysis;
- the notebook's layout: the monitor warns and adds no field;
- the float lattice on fp16/fp32/fp64 against numpy's own ``nextafter`` and ``spacing``.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import wordybird
from run_cli import run_cli
from wordybird import FreezeWarning, StreamingRecorder, WordybirdError
from wordybird.analysis.freeze import (
    AGREEMENT,
    DEFAULT_THRESHOLD,
    MASTER_WEIGHTS,
    StepEvidence,
    freeze_step,
    verdict,
)
from wordybird.analysis.lattice import (
    from_ordered,
    ordered,
    spacing_toward,
    ulp_distance,
    update_ulps,
)
from wordybird.analysis.parameter_report import format_report
from wordybird.analysis.parameters import COLUMNS, analyze_parameters
from wordybird.capture.monitor import FreezeMonitor

#: an embedding and a read-out over 16 KiB (big fields: predicted in a predictive store)
VOCAB, DIM, SEQ, BATCH = 256, 48, 12, 8
PARAMETERS = ("embed.weight", "out.weight", "out.bias")
STEPS = 60
PATIENCE = 5
MODES = ("default", "compact", "predictive")


class Tiny(nn.Module):
    """A next-token model of 256 tokens: an embedding, tanh and a linear read-out; in the
    given dtype throughout (a pure bf16 run has no fp32 copy anywhere)."""

    def __init__(self, dtype: torch.dtype, *, unused: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.out = nn.Linear(DIM, VOCAB)
        if unused:  # a parameter the loss never reaches: its gradient stays zero
            self.unused = nn.Parameter(torch.randn(8))
        self.to(dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.out(torch.tanh(self.embed(ids[:, :-1]))).float()
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, foreach=False)


def decaying(steps: int, to: float = 1e-6) -> Callable[[int], float]:
    """A geometric decay of the learning rate over ``steps``, from its initial value to
    ``to`` times that (1e-2 to 1e-8 for ``adamw``)."""
    return lambda k: to ** (min(k, steps - 1) / (steps - 1))


def train(
    paths: dict[str, Path],
    dtype: torch.dtype,
    make_optimizer: Callable[[Any], torch.optim.Optimizer] = adamw,
    *,
    steps: int = STEPS,
    schedule: Callable[[int], float] | None = None,
    monitors: dict[str, Any] | None = None,
    unused: bool = False,
) -> None:
    """Train ``Tiny`` in ``dtype``, one ``watch`` per recording (mode -> path) with its
    monitor (mode -> ``monitor=``)."""
    model = Tiny(dtype, unused=unused)
    optimizer = make_optimizer(model.parameters())
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule or decaying(steps))
    runs = [
        wordybird.watch(
            model,
            optimizer,
            StreamingRecorder(path, mode=mode),
            parameters="*",
            monitor=(monitors or {}).get(mode),
        )
        for mode, path in paths.items()
    ]
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)).backward()
        optimizer.step()
        lr.step()
        optimizer.zero_grad(set_to_none=True)
    for run in runs:
        run.close()


def moving_fractions(path: Path, name: str) -> tuple[np.ndarray, list[float | None]]:
    """Each recorded step's fraction of coordinates whose value changed, computed here from
    the recorded values (as float32 numbers: -0 equals +0)."""
    with wordybird.open(path) as rec:
        values = rec[f"{name}/value"].numpy(slice(None)).astype(np.float32)
        steps = rec.steps
    changed = [None] + [float(np.mean(values[i] != values[i - 1])) for i in range(1, len(values))]
    return steps, changed


# -- the pure bf16 AdamW run, recorded in every mode ------------------------------------------


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bf16")
    paths = {mode: folder / mode / "recording.zarr" for mode in MODES}
    for path in paths.values():
        path.parent.mkdir()
    monitors = {mode: FreezeMonitor(patience=PATIENCE) for mode in MODES}
    with pytest.warns(FreezeWarning) as caught:
        train(paths, torch.bfloat16, monitors=monitors)
    warned = [w for w in caught if w.category is FreezeWarning]
    return {"paths": paths, "monitors": monitors, "warned": warned}


def test_a_pure_bf16_run_freezes_and_analyze_names_the_parameters_and_the_step(
    bf16_run: dict[str, Any], tmp_path: Path
) -> None:
    path = bf16_run["paths"]["default"]
    result = run_cli("analyze", path, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "out" / "analysis.json").read_text())
    parameters = document["parameters"]
    assert list(parameters) == list(PARAMETERS)
    expected: dict[str, int] = {}
    for name in PARAMETERS:
        steps, fractions = moving_fractions(path, name)
        frozen = freeze_step(steps, fractions, DEFAULT_THRESHOLD)
        assert frozen is not None and 2 < frozen < STEPS - PATIENCE, (name, frozen)
        expected[name] = frozen
        p = parameters[name]
        assert p["steps"] == steps.tolist()
        assert p["hop_fraction"] == fractions
        assert p["frozen_from_step"] == frozen
        assert p["cause"] == "rounding", p["cause_reason"]
        assert MASTER_WEIGHTS in p["remedy"]
        # the update rule of this AdamW is torch's own, replayed: it agrees everywhere
        assert None not in p["predicted_hop_fraction"][1:]
        assert min(p["agreement"][1:]) >= AGREEMENT
        at = p["steps"].index(frozen)
        assert p["predicted_hop_fraction"][at] < DEFAULT_THRESHOLD
        # half a ULP at the median: the LR that would have kept half the coordinates moving
        assert p["lr_half"] == pytest.approx(
            p["learning_rate"][at] / (2 * p["predicted_update_ulps_median"][at])
        )
        assert p["lr_half"] > 10 * p["learning_rate"][at]
    assert document["summary"]["frozen"] == sorted(PARAMETERS, key=expected.__getitem__)

    # the report names the frozen parameters first, with their steps
    report = result.stdout
    assert report.index("frozen: 3 of 3") < report.index(PARAMETERS[0])
    for name, step in expected.items():
        assert f"{name}: frozen from step {step}; rounding: its updates fall below half a ULP" in (
            report
        )
    # a CSV and a plot per parameter, and the overview
    for name in PARAMETERS:
        with (tmp_path / "out" / "parameters" / f"{name}.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == COLUMNS and len(rows) == STEPS
        assert [float(r["hop_fraction"]) for r in rows[1:]] == parameters[name]["hop_fraction"][1:]
        assert (tmp_path / "out" / "parameters" / f"{name}.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "overview.png").stat().st_size > 10_000

    # the monitor warned once per parameter, within `patience` recorded steps of the freeze
    monitor = bf16_run["monitors"]["default"]
    assert set(monitor.warned) == set(PARAMETERS)
    for name, warning in monitor.warned.items():
        assert warning.cause == "rounding" and warning.fraction < DEFAULT_THRESHOLD
        assert abs(warning.at_step - expected[name]) <= PATIENCE, (name, warning.at_step)
        assert f"wordybird: {name} is frozen from step {warning.step}" in str(warning)
        assert "cause: rounding" in str(warning) and MASTER_WEIGHTS in str(warning)
    assert len(bf16_run["warned"]) == 3 * len(PARAMETERS)  # one per parameter per monitor


def test_the_monitor_records_each_parameters_moving_fraction(bf16_run: dict[str, Any]) -> None:
    """Every coordinate of these small parameters is followed: ``<name>/moved`` is then the
    exact fraction, as float32, and NaN at the first step (nothing to compare with)."""
    path = bf16_run["paths"]["default"]
    with wordybird.open(path) as rec:
        assert rec.metadata["monitor"]["fields"] == {
            f"{name}/moved": {"sample": n, "of": n}
            for name, n in zip(PARAMETERS, (VOCAB * DIM, VOCAB * DIM, VOCAB), strict=True)
        }
        for name in PARAMETERS:
            moved = rec[f"{name}/moved"].numpy(slice(None))
            assert moved.dtype == np.float32 and math.isnan(moved[0])
            _, fractions = moving_fractions(path, name)
            assert moved[1:].tolist() == [float(np.float32(f)) for f in fractions[1:]]


def test_the_monitor_follows_a_sample_of_a_bigger_parameter(tmp_path: Path) -> None:
    """With fewer sampled than held coordinates, ``moved`` is the fraction over evenly
    spaced flat indices, and the metadata says how many of how many."""
    path = tmp_path / "r.zarr"
    train(
        {"default": path},
        torch.bfloat16,
        steps=6,
        monitors={"default": FreezeMonitor(sample_size=100)},
    )
    with wordybird.open(path) as rec:
        meta = rec.metadata["monitor"]["fields"]["embed.weight/moved"]
        assert meta == {"sample": 100, "of": VOCAB * DIM}
        values = rec["embed.weight/value"].numpy(slice(None)).astype(np.float32).reshape(6, -1)
        index = np.arange(100) * (VOCAB * DIM) // 100
        want = [np.float32(np.mean(values[i, index] != values[i - 1, index])) for i in range(1, 6)]
        assert rec["embed.weight/moved"].numpy(slice(1, 6)).tolist() == want


def test_the_same_run_with_fp32_parameters_is_never_called_frozen(tmp_path: Path) -> None:
    path = tmp_path / "fp32.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FreezeWarning)  # any warning fails the run
        train({"default": path}, torch.float32, monitors={"default": True})
    with wordybird.open(path) as rec:
        result = analyze_parameters(rec)
    for name, p in result.parameters.items():
        assert p.verdict.frozen_from_step is None, (name, p.verdict)
        assert p.records[-1]["hop_fraction"] > DEFAULT_THRESHOLD
        assert min(r["agreement"] for r in p.records[1:]) >= AGREEMENT
    assert result.summary["frozen"] == []
    assert "frozen: 0 of 3" in format_report(result)


def test_every_mode_and_every_export_give_the_same_analysis(
    bf16_run: dict[str, Any], tmp_path: Path
) -> None:
    paths = dict(bf16_run["paths"])
    default = paths["default"]
    paths["export"] = wordybird.export(default, tmp_path / "run.safetensors")
    wordybird.export(default, tmp_path / "split.safetensors", steps_per_file=25)
    paths["split export"] = tmp_path / "split.safetensors.index.json"
    documents = {}
    for kind, path in paths.items():
        with wordybird.open(path) as rec:
            result = analyze_parameters(rec)
            if kind == "predictive":  # its header holds the rules; the others' metadata
                assert rec.field_prediction("out.weight/value") is not None
            if kind in ("export", "split export"):  # carried in __metadata__
                with wordybird.open(default) as store:
                    assert rec.metadata["predictions"] == store.metadata["predictions"]
        big = "the store's header" if kind == "predictive" else "the run metadata"
        sources = {name: p.prediction for name, p in result.parameters.items()}
        assert sources == {  # a small field (the bias) is stored raw, without its rule
            "embed.weight": f"adam_param from {big}"
            + ("'s predictions" if kind != "predictive" else ""),
            "out.weight": f"adam_param from {big}"
            + ("'s predictions" if kind != "predictive" else ""),
            "out.bias": "adam_param from the run metadata's predictions",
        }, kind
        documents[kind] = {
            "summary": {
                k: v for k, v in result.summary.items() if k not in ("recording", "format", "label")
            },
            "parameters": {
                name: {k: v for k, v in p.to_json().items() if k != "prediction"}
                for name, p in result.parameters.items()
            },
        }
    first = documents.pop("default")
    assert first["summary"]["frozen"]
    for kind, document in documents.items():
        assert document == first, kind


def test_parameter_selection_by_name_and_pattern(bf16_run: dict[str, Any], tmp_path: Path) -> None:
    path = bf16_run["paths"]["compact"]
    result = run_cli(
        "analyze", path, "--parameter", "out.*", "--out", tmp_path, "--threshold", "0.5"
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert list(document["parameters"]) == ["out.weight", "out.bias"]
    assert document["summary"]["threshold"] == 0.5
    for name, p in document["parameters"].items():
        steps, fractions = moving_fractions(path, name)
        assert p["frozen_from_step"] == freeze_step(steps, fractions, 0.5)
    missing = run_cli("analyze", path, "--parameter", "out.wieght", "--out", tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    (line,) = missing.stderr.splitlines()
    assert line.startswith(
        f"error: {path} has no recorded parameter matching 'out.wieght'; close: out.weight"
    )


# -- other optimizers and other causes -------------------------------------------------------


def test_sgd_with_momentum_is_predicted(tmp_path: Path) -> None:
    path = tmp_path / "sgd.zarr"
    sgd = lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, foreach=False)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FreezeWarning)
        train({"default": path}, torch.bfloat16, sgd, steps=30)
    with wordybird.open(path) as rec:
        assert rec.metadata["predictions"]["out.weight/value"]["rule"] == "sgd_param"
        result = analyze_parameters(rec)
    for name, p in result.parameters.items():
        assert p.prediction == "sgd_param from the run metadata's predictions", name
        predicted = [r["predicted_hop_fraction"] for r in p.records[1:]]
        assert None not in predicted and max(predicted) > 0.01, name
        assert min(r["agreement"] for r in p.records[1:]) >= AGREEMENT, name
        if p.verdict.frozen_from_step is not None:
            assert p.verdict.cause == "rounding", (name, p.verdict)
    assert result.frozen(), "the decaying LR froze none"


def test_rmsprop_is_observed_only_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "rmsprop.zarr"
    rmsprop = lambda p: torch.optim.RMSprop(p, lr=1e-2)  # noqa: E731
    monitor = FreezeMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FreezeWarning)
        train({"default": path}, torch.bfloat16, rmsprop, steps=40, monitors={"default": monitor})
    with wordybird.open(path) as rec:
        assert rec.metadata["predictions"] == {}
        result = analyze_parameters(rec)
    for p in result.parameters.values():
        assert all(r["predicted_hop_fraction"] is None for r in p.records)
        assert all(r["agreement"] is None for r in p.records)
        assert p.prediction is None and "no update rule of RMSprop" in (p.no_prediction or "")
    frozen = result.frozen()
    assert frozen
    for p in frozen:
        assert p.verdict.cause == "unexplained" and "RMSprop" in p.verdict.reason
    observed_only = "observed only (embed.weight, out.weight, out.bias): wordybird knows no"
    assert f"{observed_only} update rule of RMSprop" in format_report(result)
    assert monitor.warned and all(w.cause == "unexplained" for w in monitor.warned.values())


def test_a_zero_learning_rate_and_a_parameter_without_gradient_are_not_rounding(
    tmp_path: Path,
) -> None:
    """fp32 parameters (no rounding freeze), the LR set to 0 from step 12, and a parameter
    the loss never reaches: the verdicts and the monitor's warnings name those causes."""
    path = tmp_path / "zero.zarr"
    adam = lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False)  # noqa: E731
    monitor = FreezeMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FreezeWarning)
        train(
            {"default": path},
            torch.float32,
            adam,
            steps=20,
            schedule=lambda k: 1.0 if k < 11 else 0.0,  # step k + 1 runs at lr(k)
            monitors={"default": monitor},
            unused=True,
        )
    with wordybird.open(path) as rec:
        result = analyze_parameters(rec)
    verdicts = {name: p.verdict for name, p in result.parameters.items()}
    assert verdicts["unused"].frozen_from_step == 2 and verdicts["unused"].cause == "zero_gradient"
    for name in PARAMETERS:
        assert verdicts[name].frozen_from_step == 12, (name, verdicts[name])
        assert verdicts[name].cause == "zero_lr", (name, verdicts[name])
        assert "learning rate above 0" in (verdicts[name].remedy or "")
    assert {n: w.cause for n, w in monitor.warned.items()} == {
        "unused": "zero_gradient",
        **dict.fromkeys(PARAMETERS, "zero_lr"),
    }
    assert monitor.warned["unused"].at_step == 2 + PATIENCE - 1


def test_a_resumed_recording_keeps_the_monitors_fields(tmp_path: Path) -> None:
    """The fields are fixed by a recording's first step: resuming with the monitor on
    records ``<name>/moved`` again; without it the refusal says so, before recording."""
    path = tmp_path / "r.zarr"
    model = Tiny(torch.bfloat16)
    optimizer = adamw(model.parameters())
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))

    def steps(run: wordybird.Watch, count: int) -> None:
        for _ in range(count):
            model(ids).backward()
            optimizer.step()
            optimizer.zero_grad()

    with wordybird.watch(model, optimizer, StreamingRecorder(path), parameters="*") as run:
        steps(run, 2)
    off = wordybird.watch(
        model, optimizer, StreamingRecorder(path, resume=True), parameters="*", monitor=False
    )
    with pytest.raises(WordybirdError, match=r"records the freeze monitor's fields \(embed"):
        steps(off, 1)
    off.close()
    with wordybird.watch(
        model, optimizer, StreamingRecorder(path, resume=True), parameters="*"
    ) as run:
        steps(run, 2)
    with wordybird.open(path) as rec:
        assert rec.steps.tolist() == [1, 2, 3, 4]
        moved = rec["out.weight/moved"].numpy(slice(None))
        # unknown (NaN) where the monitor had no previous step: the first of each session
        assert np.isnan(moved).tolist() == [True, False, True, False]


def test_the_verdict_tells_rounding_from_a_rule_that_says_it_should_have_moved() -> None:
    """The cause's rule on evidence made by hand: rounding needs every predicted step of the
    frozen span below the threshold and agreeing on >= 99% of coordinates."""

    def run(predicted: float, agreement: float) -> list[StepEvidence]:
        moving = [StepEvidence(s, 0.5, 1e-3, False, 0.5, 1.0, 2.0) for s in (1, 2)]
        frozen = [StepEvidence(s, 0.0, 1e-6, False, predicted, agreement, 0.01) for s in (3, 4)]
        return [StepEvidence(0, None), *moving, *frozen]

    rounding = verdict(run(0.0, 0.995), DEFAULT_THRESHOLD)
    assert (rounding.frozen_from_step, rounding.cause) == (3, "rounding")
    assert rounding.lr_half == pytest.approx(1e-6 / (2 * 0.01))
    assert f"{rounding.lr_half:.3g} at step 3 (it was 1e-06)" in rounding.remedy
    moving = verdict(run(0.2, 0.8), DEFAULT_THRESHOLD)
    assert moving.cause == "unexplained" and "moves 20% of its coordinates at step 3" in (
        moving.reason
    )
    disagreeing = verdict(run(0.0, 0.98), DEFAULT_THRESHOLD)
    assert disagreeing.cause == "unexplained" and "agree on only 98%" in disagreeing.reason
    unknown = verdict([*run(0.0, 1.0)[:3], StepEvidence(3, 0.0, 1e-6)], DEFAULT_THRESHOLD, "why")
    assert (unknown.cause, unknown.reason) == ("unexplained", "why")
    assert verdict(run(0.0, 1.0)[:3], DEFAULT_THRESHOLD).frozen_from_step is None


# -- the notebook's layout ------------------------------------------------------------------


def test_the_notebook_layout_keeps_its_fields_and_the_monitor_still_warns(tmp_path: Path) -> None:
    """``RecorderCallback`` without ``parameters`` (``wordybird train``'s): a bf16 GPT-2
    with a learning rate too small to move it. The monitor warns; the fields are the
    notebook's, and the metadata gains only the update rules."""
    from transformers import Trainer, TrainingArguments

    from wordybird.training.data import TokenDataset
    from wordybird.training.model import ModelConfig, build_model, compute_in

    model = compute_in(
        build_model(ModelConfig(n_embd=8, n_layer=1, n_head=1, n_positions=16), seed=3),
        torch.float32,
    )
    recorder = StreamingRecorder(tmp_path / "rec.zarr")
    callback = wordybird.RecorderCallback(recorder)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=8,
        per_device_train_batch_size=2,
        learning_rate=1e-9,
        optim="adamw_torch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    tokens = torch.randint(0, 400, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    with pytest.warns(FreezeWarning, match="input embedding is frozen from step 1") as caught:
        Trainer(
            model=model, args=args, train_dataset=TokenDataset(tokens, 16), callbacks=[callback]
        ).train()
    assert [w.message.cause for w in caught if w.category is FreezeWarning] == ["rounding"]
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert rec.fields == (
            "embeddings",
            "grads",
            "momentum",
            "variance",
            "logits",
            "losses",
            "learning_rates",
            "grad_norms",
        )
        assert set(rec.metadata) == {"predictions"}
        assert rec.metadata["predictions"]["embeddings"]["rule"] == "adam_param"


# -- the float lattice ------------------------------------------------------------------------


def test_the_lattice_of_fp16_holds_every_bit_pattern_in_order() -> None:
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = patterns.view(np.float16)
    back = from_ordered(ordered(values), np.float16).view(np.uint16)
    negative_zero = patterns == 0x8000
    assert (
        np.array_equal(back[~negative_zero], patterns[~negative_zero]) and back[negative_zero] == 0
    )
    finite = np.sort(values[np.isfinite(values)].astype(np.float64))
    positions = np.sort(ordered(values[np.isfinite(values)]))
    # consecutive lattice positions are consecutive values (the two zeros share one)
    assert np.array_equal(np.unique(positions), np.arange(positions[0], positions[-1] + 1))
    assert np.all(np.diff(finite) >= 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ulps_and_spacing_match_numpys_nextafter(dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * 10.0 ** rng.integers(-6, 4, 2000)).astype(dtype)
    up = np.nextafter(x, np.array(np.inf, dtype))
    down = np.nextafter(x, np.array(-np.inf, dtype))
    assert np.all(ulp_distance(x, up) == 1) and np.all(ulp_distance(down, up) == 2)
    assert np.array_equal(
        spacing_toward(x, np.ones_like(x)), (up - x).astype(spacing_toward(x, x).dtype)
    )
    assert np.array_equal(
        spacing_toward(x, -np.ones_like(x)), (x - down).astype(spacing_toward(x, x).dtype)
    )
    # round to nearest moves a value exactly when the update exceeds half the spacing
    delta = rng.uniform(-1, 1, 2000) * np.abs(np.spacing(x)).astype(np.float64) * 1.5
    half = spacing_toward(x, delta).astype(np.float64) / 2
    clear = np.abs(np.abs(delta) - half) > 1e-3 * half
    moved = (x.astype(np.float64) + delta).astype(dtype) != x
    assert np.array_equal((update_ulps(x, delta) > 0.5)[clear], moved[clear])
