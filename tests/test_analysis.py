"""The lattice-hop analysis: bf16 lattice math, hop statistics, the Adam prediction, freeze."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import wordybird
from run_cli import run_cli
from wordybird import StreamingRecorder, WordybirdError
from wordybird.analysis.hops import COLUMNS, analyze, freeze_step
from wordybird.analysis.lattice import (
    from_ordered_int,
    ordered_int,
    spacing_toward,
    ulp_distance,
)
from wordybird.analysis.masks import MASKS_FILENAME, load_masks
from wordybird.analysis.report import explanation, format_report
from wordybird.analysis.run_inputs import AdamSettings, learning_rates, optimizer_steps

V, D = 40, 8
UNTRAINED = torch.arange(0, 16)  # rows 0..15 never occur in the "corpus"
TRAINED = torch.arange(16, V)


def bf16(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(torch.bfloat16)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16)


def from_bits(b: torch.Tensor) -> torch.Tensor:
    return b.to(torch.int16).view(torch.bfloat16)


def nudge_away_from_zero(x: torch.Tensor, where: torch.Tensor, k: int) -> torch.Tensor:
    """Move the selected values exactly k ULPs away from zero by raising their magnitude bits.

    For either sign, adding k to the int16 pattern grows the magnitude by k lattice steps
    (as long as it stays within one sign), independently of the code under test.
    """
    b = bits(x).clone()
    b[where] += k
    return from_bits(b)


def write_masks(path: Path, vocab: int = V) -> Path:
    untrained = torch.zeros(vocab, dtype=torch.bool)
    untrained[UNTRAINED] = True
    save_file(
        {
            "trained_mask": ~untrained,
            "untrained_mask": untrained,
            "trained_indices": torch.nonzero(~untrained).flatten(),
            "untrained_indices": torch.nonzero(untrained).flatten(),
        },
        str(path),
    )
    return path


def write_recording(
    path: Path, steps: list[int], tensors: list[dict[str, torch.Tensor]], metadata: dict
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with StreamingRecorder(path, metadata=metadata) as rec:
        for step, values in zip(steps, tensors, strict=True):
            rec.record(step, values)
    return path


def base_embeddings(seed: int = 0) -> torch.Tensor:
    """Values of both signs, away from powers of two and from zero (so nudges stay in sign)."""
    g = torch.Generator().manual_seed(seed)
    magnitude = 0.1 + torch.rand(V, D, generator=g)
    sign = torch.where(torch.rand(V, D, generator=g) < 0.5, -1.0, 1.0)
    return (magnitude * sign).bfloat16()


# -- the lattice ------------------------------------------------------------------------------


def test_ordered_int_round_trips_every_bit_pattern_but_negative_zero() -> None:
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = from_bits(patterns)
    back = bits(from_ordered_int(ordered_int(values)))
    negative_zero = patterns == -32768
    assert torch.equal(back[~negative_zero], patterns[~negative_zero])
    assert int(back[negative_zero]) == 0  # -0 and +0 share lattice position 0


def test_ulp_distance_counts_lattice_steps_for_both_signs() -> None:
    x = base_embeddings()
    everywhere = torch.ones_like(x, dtype=torch.bool)
    for k in (1, 2, 7, 100):
        moved = nudge_away_from_zero(x, everywhere, k)
        assert torch.equal(ulp_distance(x, moved), torch.full((V, D), k, dtype=torch.int32))
        assert torch.equal(ulp_distance(moved, x), torch.full((V, D), k, dtype=torch.int32))


def test_ulp_distance_across_zero_and_exponent_boundaries() -> None:
    tiny = 2.0**-133  # the smallest bf16 subnormal
    a = bf16(tiny, 0.0, 0.0, 1.0, 1.0, -1.0, 2.0 - 2.0**-7)
    b = bf16(-tiny, -0.0, tiny, 1.0 - 2.0**-8, 1.0 + 2.0**-7, 1.0, 2.0)
    assert ulp_distance(a, b).tolist() == [2, 0, 1, 1, 1, 2 * 0x3F80, 1]


def test_ulp_distance_does_not_fail_on_nan_or_inf() -> None:
    a = bf16(1.0, float("nan"), float("inf"), float("nan"))
    b = bf16(float("nan"), float("nan"), float("inf"), 1.0)
    d = ulp_distance(a, b)
    assert d[0] > 0 and d[1] == 0 and d[2] == 0 and d[3] > 0


def test_spacing_toward_depends_on_direction_at_powers_of_two() -> None:
    x = bf16(1.0, 1.0, -1.0, -1.0, 1.5, 0.0, -0.0, 0.3)
    direction = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    expected = [2**-7, 2**-8, 2**-7, 2**-8, 2**-7, 2**-133, 2**-133, 2**-9]
    assert spacing_toward(x, direction).tolist() == expected
    assert spacing_toward(x, direction).dtype == torch.float32


def test_spacing_predicts_round_to_nearest() -> None:
    """|delta| > spacing/2 is exactly when bf16(x + delta) != x (away from exact ties)."""
    x = base_embeddings(3).flatten()
    g = torch.Generator().manual_seed(5)
    delta = (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 2 * 2.0**-7
    half = spacing_toward(x, delta) / 2
    clear = (delta.abs() - half).abs() > 1e-12
    changed = (x.to(torch.float64) + delta).to(torch.bfloat16) != x
    assert torch.equal((delta.abs() > half)[clear], changed[clear])


# -- masks ------------------------------------------------------------------------------------


def test_masks_load_and_refuse_bad_files(tmp_path: Path) -> None:
    masks = load_masks(write_masks(tmp_path / "m.safetensors"), V)
    assert torch.equal(masks.untrained, UNTRAINED) and torch.equal(masks.trained, TRAINED)
    with pytest.raises(WordybirdError, match="has shape .* 41 rows"):
        load_masks(tmp_path / "m.safetensors", V + 1)
    with pytest.raises(WordybirdError, match="not found"):
        load_masks(tmp_path / "missing.safetensors", V)
    save_file(
        {"untrained_indices": torch.arange(3), "trained_indices": torch.arange(2, 9)},
        str(tmp_path / "overlap.safetensors"),
    )
    with pytest.raises(WordybirdError, match="both trained and untrained"):
        load_masks(tmp_path / "overlap.safetensors", V)
    save_file({"untrained_indices": torch.arange(3)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(WordybirdError, match="neither trained_mask nor trained_indices"):
        load_masks(tmp_path / "half.safetensors", V)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WordybirdError, match="cannot read token masks"):
        load_masks(tmp_path / "junk.safetensors", V)


# -- hop statistics on a recording with known hops ---------------------------------------------

#: step -> (untrained coordinates moved, their ULPs), (trained coordinates moved, their ULPs)
HOP_PLAN = {
    1: ((32, 3), (48, 1)),
    2: ((4, 2), (48, 5)),
    3: ((1, 1), (10, 1)),
    4: ((0, 0), (5, 2)),
    5: ((0, 0), (1, 9)),
}


def planned_run(tmp_path: Path) -> tuple[Path, list[torch.Tensor]]:
    """Embeddings whose hops are exactly HOP_PLAN, with no optimizer state recorded."""
    w = base_embeddings()
    states = [w]
    for step in range(1, 6):
        (nu, ku), (nt, kt) = HOP_PLAN[step]
        where = torch.zeros(V, D, dtype=torch.bool)
        where.view(-1)[(UNTRAINED[0] * D) + torch.randperm(16 * D)[:nu]] = True
        untrained_moved = nudge_away_from_zero(states[-1], where, ku)
        where = torch.zeros(V, D, dtype=torch.bool)
        where.view(-1)[(TRAINED[0] * D) + torch.randperm(len(TRAINED) * D)[:nt]] = True
        states.append(nudge_away_from_zero(untrained_moved, where, kt))
    path = write_recording(
        tmp_path / "run" / "recording.zarr",
        list(range(6)),
        [{"embeddings": s} for s in states],
        {"starting_step": 0},
    )
    write_masks(tmp_path / "run" / "token_masks.safetensors")
    return path, states


def test_hop_fractions_and_ulp_sizes_are_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path, _ = planned_run(tmp_path)
    with wordybird.open(path) as rec:
        result = analyze(rec, load_masks(path.parent / "token_masks.safetensors", V))
    first, *records = result.records
    assert first["step"] == 0 and first["untrained_hop_fraction"] is None
    for record in records:
        (nu, ku), (nt, kt) = HOP_PLAN[record["step"]]
        assert record["untrained_hop_fraction"] == nu / (16 * D)
        assert record["trained_hop_fraction"] == nt / (len(TRAINED) * D)
        assert record["untrained_hop_ulps_mean"] == (ku if nu else None)
        assert record["untrained_hop_ulps_max"] == (ku if nu else None)
        assert record["trained_hop_ulps_mean"] == kt and record["trained_hop_ulps_max"] == kt
        assert record["predicted_untrained_hop_fraction"] is None  # no Adam state recorded
    assert result.summary["freeze_step"] == 4
    assert "no momentum or variance" in result.summary["prediction"]


def test_displacement_and_cloud_match_the_notebook_formulas(tmp_path: Path) -> None:
    torch.manual_seed(1)
    path, states = planned_run(tmp_path)
    with wordybird.open(path) as rec:
        result = analyze(rec, load_masks(path.parent / "token_masks.safetensors", V))
    for position, record in enumerate(result.records):
        w = states[position][UNTRAINED].float()
        centroid = w.mean(dim=0)
        assert record["untrained_centroid_norm"] == torch.norm(centroid).item()
        assert record["untrained_radius"] == torch.norm(w - centroid, dim=1).max().item()
        if position == 0:
            continue
        for group, rows in (("untrained", UNTRAINED), ("trained", TRAINED)):
            for ref, name in ((states[position - 1], "prev"), (states[0], "first")):
                d = torch.norm(states[position][rows].float() - ref[rows].float(), dim=1)
                assert record[f"{group}_displacement_{name}_max"] == d.max().item()
                assert record[f"{group}_displacement_{name}_mean"] == d.mean().item()
                assert record[f"{group}_displacement_{name}_median"] == d.median().item()


def test_freeze_step_rule() -> None:
    steps = np.arange(10, 16)
    assert freeze_step(steps, [None, 0.5, 0.1, 0.0, 0.0, 0.0], 1e-3) == 13
    assert freeze_step(steps, [None, 0.5, 0.0, 0.1, 0.0, 0.0005], 1e-3) == 14
    assert freeze_step(steps, [None, 0.0, 0.0, 0.0, 0.0, 0.0], 1e-3) == 11
    assert freeze_step(steps, [None, 0.0, 0.0, 0.0, 0.0, 0.002], 1e-3) is None
    assert freeze_step(steps, [None, 0.0, 0.0, 0.0, None, 0.0], 1e-3) == 15


# -- the Adam prediction ----------------------------------------------------------------------


def hand_update(
    m: torch.Tensor, v: torch.Tensor, lr: float, t: int, b1: float, b2: float, eps: float
) -> torch.Tensor:
    """torch.optim.Adam's step, written out: lr / (1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)."""
    m64, v64 = m.double(), v.double()
    return lr / (1 - b1**t) * m64 / (v64.sqrt() / math.sqrt(1 - b2**t) + eps)


def test_prediction_matches_a_hand_computed_adam_update(tmp_path: Path) -> None:
    """Moments are built so that each coordinate's |u| is 0.3x or 3x its half spacing.

    The weights then move exactly as round-to-nearest applies u, except one coordinate that
    is held still against the prediction: agreement is then known exactly.
    """
    lr, b1, b2, eps = torch.tensor(0.01).item(), 0.9, 0.99, 1e-8  # learning_rates are f32
    t = 2  # step 5 of a run whose optimizer started at starting_step 3
    w0 = base_embeddings(7)
    g = torch.Generator().manual_seed(11)
    v = (0.5 + torch.rand(V, D, generator=g)).bfloat16()
    sign = torch.where(torch.rand(V, D, generator=g) < 0.5, -1.0, 1.0).double()
    big = torch.rand(V, D, generator=g) < 0.4
    scale = torch.where(big, 3.0, 0.3).double()
    # the update must move w by `scale` half-spacings in direction `sign`, i.e. change = -u
    half = spacing_toward(w0, sign) / 2
    target_u = -sign * scale * half
    m = target_u * (v.double().sqrt() / math.sqrt(1 - b2**t) + eps) * (1 - b1**t) / lr
    m = m.bfloat16()
    u = hand_update(m, v, lr, t, b1, b2, eps)
    expected = u.abs() > spacing_toward(w0, -u) / 2
    assert torch.equal(expected, big)  # bf16 rounding of m kept every ratio on its side
    w1 = (w0.double() - u).bfloat16()
    assert torch.equal(w1 != w0, expected)
    stuck = (int(UNTRAINED[3]), 2)
    w1[stuck] = w0[stuck]
    if not big[stuck]:
        w1[stuck] = nudge_away_from_zero(w0, torch.ones_like(big), 1)[stuck]

    zeros = torch.zeros(V, D, dtype=torch.bfloat16)
    path = write_recording(
        tmp_path / "recording.zarr",
        [4, 5],
        [
            {
                "embeddings": w0,
                "momentum": zeros,
                "variance": zeros,
                "learning_rates": torch.tensor(0.5),
            },
            {"embeddings": w1, "momentum": m, "variance": v, "learning_rates": torch.tensor(lr)},
        ],
        {
            "starting_step": 3,
            "adam_beta1": b1,
            "adam_beta2": b2,
            "adam_epsilon": eps,
            "weight_decay": 0.0,
        },
    )
    with wordybird.open(path) as rec:
        result = analyze(rec, load_masks(write_masks(tmp_path / "m.safetensors"), V))
    record = result.records[1]
    assert record["optimizer_step"] == t and record["learning_rate"] == lr
    for group, rows in (("untrained", UNTRAINED), ("trained", TRAINED)):
        predicted = expected[rows].double().mean().item()
        assert record[f"predicted_{group}_hop_fraction"] == predicted
        agreement = 1.0 - (1 / (len(rows) * D) if group == "untrained" else 0.0)
        assert record[f"{group}_prediction_agreement"] == agreement
        assert record[f"{group}_update_mean"] == pytest.approx(
            u[rows].abs().mean().item(), rel=1e-6
        )
        ratio = u[rows].abs() / (spacing_toward(w0[rows], -u[rows]) / 2)
        assert record[f"{group}_update_ratio_median"] == pytest.approx(
            ratio.median().item(), rel=1e-6
        )
    assert result.summary["learning_rate_source"] == "recorded field learning_rates"
    assert result.summary["optimizer_step_rule"] == "t = step - starting_step (3)"


def test_optimizer_step_offset_continues_the_bias_correction(tmp_path: Path) -> None:
    """A run that restored Adam's state says so; t then counts the restored steps too."""
    w0 = bf16(*([1.0] * (V * D))).reshape(V, D)
    m = torch.full((V, D), 1e-3).bfloat16()
    v = torch.full((V, D), 1e-6).bfloat16()
    # m̂/√v̂ is ≈0.316 at t = 1 but ≈0.795 at t = 1001; with lr = 4e-3 only the latter beats
    # half the gap below 1.0 (2^-9 ≈ 1.95e-3), so only the continued count predicts hops.
    lr = 4e-3
    results = {}
    for offset in (0, 1000):
        path = write_recording(
            tmp_path / f"o{offset}.zarr",
            [0, 1],
            [{"embeddings": w0, "momentum": m, "variance": v}] * 2,
            {
                "starting_step": 0,
                "optimizer_step_offset": offset,
                "learning_rate": lr,
                "max_steps": 1,
                "adam_beta1": 0.9,
                "adam_beta2": 0.999,
            },
        )
        with wordybird.open(path) as rec:
            results[offset] = analyze(rec, load_masks(write_masks(tmp_path / "m.safetensors"), V))
    for offset, t in ((0, 1), (1000, 1001)):
        record = results[offset].records[1]
        assert record["optimizer_step"] == t
        u = hand_update(m[0, :1], v[0, :1], lr, t, 0.9, 0.999, 1e-8).item()
        assert record["untrained_update_mean"] == pytest.approx(u, rel=1e-6)
        assert record["predicted_untrained_hop_fraction"] == (1.0 if u > 2.0**-9 else 0.0)
    assert (
        results[0].records[1]["predicted_untrained_hop_fraction"]
        != (results[1000].records[1]["predicted_untrained_hop_fraction"])
    )
    assert "optimizer_step_offset (1000)" in results[1000].summary["optimizer_step_rule"]


@pytest.mark.parametrize(
    ("metadata", "t"),
    [
        ({"starting_step": 20}, [0, 1]),
        ({"starting_step": 20, "optimizer_step_offset": 20}, [20, 21]),
        # `wordybird continue` that kept the checkpoint's Adam state
        (
            {
                "starting_step": 20,
                "run": {"continued_from": "c/checkpoint-20", "fresh_optimizer": False},
            },
            [20, 21],
        ),
        # ... and one that started a fresh optimizer, as the notebook did
        (
            {
                "starting_step": 20,
                "run": {"continued_from": "c/checkpoint-20", "fresh_optimizer": True},
            },
            [0, 1],
        ),
    ],
)
def test_optimizer_step_rule_follows_the_metadata(
    tmp_path: Path, metadata: dict, t: list[int]
) -> None:
    path = write_recording(
        tmp_path / "r.zarr", [20, 21], [{"embeddings": base_embeddings()}] * 2, metadata
    )
    with wordybird.open(path) as rec:
        steps, _ = optimizer_steps(rec)
    assert steps.tolist() == t


def test_adam_constants_come_from_the_metadata_or_its_hyperparameters() -> None:
    settings = AdamSettings.from_metadata(
        {
            "adam_beta1": 0.8,
            "weight_decay": 0.1,
            "hyperparameters": {"adam_epsilon": 1e-6, "adam_beta1": 0.5},
        }
    )
    assert settings == AdamSettings(beta1=0.8, beta2=0.999, epsilon=1e-6, weight_decay=0.1)


def test_weight_decay_term_is_included(tmp_path: Path) -> None:
    """With m = 0 only lr·wd·w moves w = 1.0 down: it hops iff lr·wd > 2^-9 (half the gap)."""
    w0 = bf16(*([1.0] * (V * D))).reshape(V, D)
    zeros = torch.zeros(V, D, dtype=torch.bfloat16)
    ones = torch.ones(V, D, dtype=torch.bfloat16)
    fractions = {}
    for wd in (0.01, 0.05):
        path = write_recording(
            tmp_path / f"wd{wd}.zarr",
            [0, 1],
            [{"embeddings": w0, "momentum": zeros, "variance": ones}] * 2,
            {"starting_step": 0, "learning_rate": 0.1, "max_steps": 1, "weight_decay": wd},
        )
        with wordybird.open(path) as rec:
            result = analyze(rec, load_masks(write_masks(tmp_path / "m.safetensors"), V))
        fractions[wd] = result.records[1]["predicted_trained_hop_fraction"]
    assert fractions == {0.01: 0.0, 0.05: 1.0}


def test_learning_rate_from_metadata_follows_the_trainers_linear_decay(tmp_path: Path) -> None:
    w = base_embeddings()
    path = write_recording(
        tmp_path / "recording.zarr",
        list(range(100, 105)),
        [{"embeddings": w}] * 5,
        {"starting_step": 100, "learning_rate": 1e-3, "max_steps": 4},
    )
    with wordybird.open(path) as rec:
        values, source = learning_rates(rec)
    # the k-th optimizer step (k = step - 100) runs at lr * (4 - (k - 1)) / 4
    assert values.tolist() == pytest.approx([1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert "linear decay to 0 at max_steps=4" in source


# -- an end-to-end run with a real bf16 Adam ----------------------------------------------------


def adam_run(
    path: Path,
    *,
    start: int = 0,
    total: int = 30,
    lr: float = 4e-3,
    seed: int = 0,
    initial: torch.Tensor | None = None,
) -> Path:
    """Record torch's Adam on a bf16 parameter under the Trainer's linear LR decay.

    The untrained rows get a small steady gradient (as through a tied output layer), so
    their Adam update is about lr: they stop hopping once lr drops below half their bf16
    spacing. ``start``/``initial`` make a continuation with a fresh optimizer, like WB3.
    Writes the masks beside the recording, as training does.
    """
    g = torch.Generator().manual_seed(seed)
    if initial is None:
        initial = (0.25 + 0.2 * torch.rand(V, D, generator=g)).bfloat16()
    weight = torch.nn.Parameter(initial.clone())
    opt = torch.optim.Adam([weight], lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, (total - k) / total))
    zeros = torch.zeros(V, D, dtype=torch.bfloat16)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "starting_step": start,
        "learning_rate": lr,
        "max_steps": total,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
    }
    with StreamingRecorder(path, metadata=metadata) as rec:
        rec.record(
            start,
            {
                "embeddings": weight.detach(),
                "momentum": zeros,
                "variance": zeros,
                "learning_rates": torch.tensor(lr),
            },
        )
        for step in range(start + 1, start + total + 1):
            grad = torch.randn(V, D, generator=g)
            grad[UNTRAINED] = 1e-3 * (1 + 0.1 * torch.randn(len(UNTRAINED), D, generator=g))
            weight.grad = grad.bfloat16()
            used = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            state = opt.state[weight]
            rec.record(
                step,
                {
                    "embeddings": weight.detach(),
                    "momentum": state["exp_avg"],
                    "variance": state["exp_avg_sq"],
                    "learning_rates": torch.tensor(used),
                },
            )
    write_masks(path.parent / MASKS_FILENAME)
    return path


def test_a_real_bf16_adam_run_freezes_where_the_update_falls_below_the_lattice(
    tmp_path: Path,
) -> None:
    total = 30
    path = adam_run(tmp_path / "run" / "recording.zarr", total=total)
    with wordybird.open(path) as rec:
        result = analyze(rec, load_masks(path.parent / MASKS_FILENAME, V))
    s = result.summary
    assert s["freeze_step"] is not None and 1 < s["freeze_step"] < total
    assert s["predicted_freeze_step"] is not None
    assert abs(s["predicted_freeze_step"] - s["freeze_step"]) <= 2
    agreements = [r["untrained_prediction_agreement"] for r in result.records[1:]]
    assert min(agreements) > 0.9
    assert "because the Adam update" in explanation(result)


def test_learning_rate_fallback_matches_the_recorded_schedule(tmp_path: Path) -> None:
    """Without the learning_rates field, the metadata's linear decay gives the same LRs."""
    path = adam_run(tmp_path / "run" / "recording.zarr", total=12)
    with wordybird.open(path) as rec:
        recorded, _ = learning_rates(rec)
        steps = rec.steps
        fields = {f: [rec.read(f, i) for i in range(len(steps))] for f in ("embeddings",)}
        metadata = rec.metadata
    bare = write_recording(
        tmp_path / "bare.zarr",
        steps.tolist(),
        [{"embeddings": e} for e in fields["embeddings"]],
        {k: v for k, v in metadata.items() if k in ("starting_step", "learning_rate", "max_steps")},
    )
    with wordybird.open(bare) as rec:
        derived, source = learning_rates(rec)
    assert derived.tolist() == pytest.approx(recorded.tolist(), rel=1e-6)
    assert source.startswith("metadata learning_rate=0.004")


# -- outputs and the command ---------------------------------------------------------------


def wb1_and_wb3(tmp_path: Path) -> tuple[Path, Path]:
    """A run and its continuation from its last state with a fresh optimizer (as WB3 did)."""
    wb1 = adam_run(tmp_path / "wb1" / "recording.zarr", total=20)
    with wordybird.open(wb1) as rec:
        last = rec["embeddings"][-1]
    wb3 = adam_run(tmp_path / "wb3" / "recording.zarr", start=20, total=20, seed=1, initial=last)
    return wb1, wb3


def read_png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_analyze_command_writes_json_csv_plots_and_reports(tmp_path: Path) -> None:
    wb1, wb3 = wb1_and_wb3(tmp_path)
    result = run_cli("analyze", wb1, "--compare", wb3)
    assert result.returncode == 0, result.stderr
    out = wb1.parent / "analysis"
    with wordybird.open(wb1) as rec:
        expected = analyze(rec, load_masks(wb1.parent / MASKS_FILENAME, V))
    frozen = expected.summary["freeze_step"]
    assert frozen is not None
    assert f"from then on): {frozen}" in result.stdout
    assert "because the Adam update lr·m̂/(√v̂+ε) falls below half the bf16 spacing" in (
        result.stdout
    )
    assert "compare wb3 (20..40)" in result.stdout

    document = json.loads((out / "analysis.json").read_text())
    assert document["records"] == expected.records
    assert document["summary"]["freeze_step"] == frozen
    assert document["summary"]["explanation"] == explanation(expected)
    assert [c["summary"]["label"] for c in document["compare"]] == ["wb3"]
    assert document["compare"][0]["records"][0]["step"] == 20

    with (out / "analysis.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == len(expected.records) == 21
    for row, record in zip(rows, expected.records, strict=True):
        for key in COLUMNS:
            value = record[key]
            assert row[key] == ("" if value is None else str(value))
            if value is not None:
                assert float(row[key]) == value

    for name in ("hops.png", "displacement.png"):
        width, height = read_png_size(out / name)
        assert width > 500 and height > 500
        assert (out / name).stat().st_size > 10_000


def test_analyze_command_options(tmp_path: Path) -> None:
    wb1, _ = wb1_and_wb3(tmp_path)
    masks = tmp_path / "elsewhere.safetensors"
    (wb1.parent / MASKS_FILENAME).rename(masks)
    result = run_cli(
        "analyze", wb1, "--masks", masks, "--out", tmp_path / "o", "--threshold", "0.5"
    )
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "o" / "analysis.json").read_text())
    with wordybird.open(wb1) as rec:
        loose = analyze(rec, load_masks(masks, V), threshold=0.5)
        strict = analyze(rec, load_masks(masks, V))
    assert document["summary"]["threshold"] == 0.5
    assert document["summary"]["freeze_step"] == loose.summary["freeze_step"]
    assert loose.summary["freeze_step"] < strict.summary["freeze_step"]
    assert document["summary"]["masks"] == str(masks)
    assert not (wb1.parent / "analysis").exists()


def test_a_run_that_still_hops_is_reported_not_frozen(tmp_path: Path) -> None:
    """A large LR keeps the last step's update above the lattice spacing."""
    path = adam_run(tmp_path / "run" / "recording.zarr", total=10, lr=0.05)
    with wordybird.open(path) as rec:
        result = analyze(rec, load_masks(path.parent / MASKS_FILENAME, V))
    assert result.summary["freeze_step"] is None
    text = explanation(result)
    assert text.startswith("not frozen: untrained coordinates still hop at the last step 10")
    assert "predicted 100% vs observed 100%" in text
    assert "freeze step (untrained hop fraction < 0.001 from then on): not frozen" in (
        format_report(result)
    )


def test_analyze_command_errors(tmp_path: Path) -> None:
    wb1, _ = wb1_and_wb3(tmp_path)
    small = write_masks(tmp_path / "small.safetensors", vocab=V - 1)
    no_embeddings = write_recording(
        tmp_path / "losses.zarr", [0, 1], [{"losses": torch.tensor(1.0)}] * 2, {}
    )
    cases = [
        (
            (wb1, "--masks", small),
            "untrained_mask has shape (39,), but the recording's embeddings have 40 rows",
        ),
        ((no_embeddings,), "has no 'embeddings' field (it has losses)"),
        ((tmp_path / "nowhere.zarr",), "does not exist"),
    ]
    (wb1.parent / MASKS_FILENAME).unlink()
    cases.append(((wb1,), f"token masks {wb1.parent / MASKS_FILENAME} not found; pass --masks"))
    for args, message in cases:
        result = run_cli("analyze", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert not (wb1.parent / "analysis").exists()


def test_analysis_of_a_store_equals_analysis_of_its_export(tmp_path: Path) -> None:
    export = pytest.importorskip("wordybird.export")
    wb1 = adam_run(tmp_path / "wb1" / "recording.zarr", total=15)
    exported = export.export_safetensors(wb1, tmp_path / "wb1" / "recording.safetensors")
    masks = load_masks(wb1.parent / MASKS_FILENAME, V)
    results = []
    for path in (wb1, exported):
        with wordybird.open(path) as rec:
            results.append(analyze(rec, masks))
    store, file = results
    assert file.summary["format"] == "safetensors"
    assert store.records == file.records
    skip = {"recording", "format"}
    assert {k: v for k, v in store.summary.items() if k not in skip} == {
        k: v for k, v in file.summary.items() if k not in skip
    }
