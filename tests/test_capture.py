"""wordybird.capture: any parameters by name, with the optimizer's real state, on a second
architecture (a tiny Llama built offline from its config) and in a plain loop.

What is checked against what:

- the recorded optimizer state against a copy of ``optimizer.state`` taken right after the
  same step, bit for bit, for SGD with momentum, AdamW, torch's Adafactor and
  transformers' Adafactor, through ``wordybird.watch`` and through ``RecorderCallback``;
- the recorded gradient against the gradient the loop held before it clipped, bit for bit,
  and against one big batch's gradient (accumulation of 4);
- ``rows=``, ``store_dtype=``, parameter choice and resuming through the public API.

Tiny shapes throughout: hidden size 16, 2 layers, vocabulary 64, 8-token sequences.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.optimization import Adafactor as HFAdafactor

import wordybird
from wordybird import WordybirdError

VOCAB, SEQ = 64, 8
EMBED = "model.embed_tokens.weight"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"
#: a 2-D parameter (factored by Adafactor), another, and a 1-D one (not factored)
THREE = [EMBED, Q_PROJ, NORM]


def tiny_llama(dtype: torch.dtype = torch.float32, *, tied: bool = False) -> LlamaForCausalLM:
    """A 2-layer Llama from a config alone: nothing is downloaded."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).to(dtype)


def token_batches(count: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(VOCAB, (batch, SEQ), generator=g) for _ in range(count)]


def assert_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype, same shape, same bits."""
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def state_copy(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, Any]:
    """A deep copy of what the optimizer holds for a parameter right now."""
    return copy.deepcopy(dict(optimizer.state[param]))


def trainer_args(tmp_path: Path, **changes: Any) -> TrainingArguments:
    """A plain Trainer run without checkpoints, logs or progress bars."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    return TrainingArguments(**{**settings, **changes})


def token_dataset(rows: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    (ids,) = token_batches(1, rows, seed)
    return [{"input_ids": row, "labels": row} for row in ids]


# -- the optimizer's real state, bit for bit ------------------------------------------------


def _sgd(params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _adamw(params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _torch_adafactor(params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adafactor(params, lr=1e-2)


def _hf_adafactor(params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    # its defaults: relative_step=True and lr=None (it computes its own step size)
    return HFAdafactor(params, beta1=0.9)


# Each optimizer's tensors per parameter after a step: [2-D parameter], [1-D parameter].
# transformers' Adafactor also keeps ``step`` as a Python int, which is not a tensor and is
# not recorded (the recording's step numbers count the same steps).
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], set[str], set[str]]] = {
    "sgd-momentum": (_sgd, {"momentum_buffer"}, {"momentum_buffer"}),
    "adamw": (_adamw, {"step", "exp_avg", "exp_avg_sq"}, {"step", "exp_avg", "exp_avg_sq"}),
    "torch-adafactor": (_torch_adafactor, {"step", "row_var", "col_var"}, {"step", "variance"}),
    "hf-adafactor": (
        _hf_adafactor,
        {"exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "RMS"},
        {"exp_avg", "exp_avg_sq", "RMS"},
    ),
}


@pytest.mark.parametrize("which", list(OPTIMIZERS))
def test_watch_records_the_optimizers_own_state_bit_for_bit(which: str, tmp_path: Path) -> None:
    make, keys_2d, keys_1d = OPTIMIZERS[which]
    model = tiny_llama()
    optimizer = make(model.parameters())
    params = dict(model.named_parameters())
    path = tmp_path / "rec.zarr"
    seen: list[dict[str, Any]] = []
    schedule = None
    if optimizer.param_groups[0]["lr"] is not None:  # a schedule moves it after each step
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5**i)
    with wordybird.watch(model, optimizer, wordybird.StreamingRecorder(path), parameters=THREE):
        for ids in token_batches(3, 2):
            model(input_ids=ids, labels=ids).loss.backward()
            grads = {n: params[n].grad.clone() for n in THREE}  # before clipping
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            lrs = [group["lr"] for group in optimizer.param_groups]
            optimizer.step()
            seen.append(
                {
                    "grads": grads,
                    "norm": norm,
                    "lr": lrs[0],
                    "values": {n: params[n].detach().clone() for n in THREE},
                    "states": {n: state_copy(optimizer, params[n]) for n in THREE},
                }
            )
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None:
                schedule.step()

    with wordybird.open(path) as rec:
        assert rec.steps.tolist() == [1, 2, 3]
        for name in THREE:
            want_keys = keys_2d if params[name].dim() == 2 else keys_1d
            recorded = {f.removeprefix(f"{name}/") for f in rec.fields if f.startswith(f"{name}/")}
            assert recorded == {"value", "grad", "lr", *want_keys}
        for i, step in enumerate(seen):
            for name in THREE:
                assert_bits(rec[f"{name}/value"][i], step["values"][name])
                assert_bits(rec[f"{name}/grad"][i], step["grads"][name])
                state = step["states"][name]
                tensors = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
                assert tensors == (keys_2d if params[name].dim() == 2 else keys_1d)
                for key in tensors:
                    assert_bits(rec[f"{name}/{key}"][i], state[key])
                lr = rec[f"{name}/lr"][i]
                if step["lr"] is None:  # the optimizer computes its own step size
                    assert torch.isnan(lr)
                else:
                    assert_bits(lr, torch.tensor(step["lr"], dtype=torch.float32))
            # the pre-clip global norm (clip_grad_norm_ sums in another order: not bit-equal)
            torch.testing.assert_close(
                rec["grad_norms"][i], step["norm"].float(), rtol=1e-5, atol=0
            )
            assert step["norm"] > 0.05 * 10  # clipping really changed the gradients
        assert rec.metadata["optimizer"]["class"] == type(optimizer).__name__


def test_recorder_callback_records_the_trainers_adamw_state_bit_for_bit(tmp_path: Path) -> None:
    """The Trainer's own optimizer, the initial step included (Adam's state is zero before
    its first update, by definition)."""
    model = tiny_llama()
    params = dict(model.named_parameters())
    recorder = wordybird.StreamingRecorder(tmp_path / "rec.zarr")
    callback = wordybird.RecorderCallback(recorder, parameters=THREE)
    seen: dict[int, dict[str, Any]] = {}

    class Probe(TrainerCallback):  # after RecorderCallback in the list: sees what it saw
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen[0] = {
                "values": {n: params[n].detach().clone() for n in THREE},
                "states": {n: state_copy(optimizer, params[n]) for n in THREE},
            }

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            # max_grad_norm=0 turns clipping off: these are the step's gradients
            self.grads = {n: params[n].grad.clone() for n in THREE}
            self.lr = optimizer.param_groups[0]["lr"]

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen[state.global_step] = {
                "grads": self.grads,
                "lr": self.lr,
                "values": {n: params[n].detach().clone() for n in THREE},
                "states": {n: state_copy(optimizer, params[n]) for n in THREE},
            }

    args = trainer_args(tmp_path, max_grad_norm=0.0, weight_decay=0.1)
    trainer = Trainer(
        model=model, args=args, train_dataset=token_dataset(8), callbacks=[callback, Probe()]
    )
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, torch.optim.AdamW)
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert rec.steps.tolist() == [0, 1, 2, 3] == sorted(seen)
        for name in THREE:
            fields = {f.removeprefix(f"{name}/") for f in rec.fields if f.startswith(f"{name}/")}
            assert fields == {"value", "grad", "lr", "step", "exp_avg", "exp_avg_sq"}
        for i, step in sorted(seen.items()):
            for name in THREE:
                assert_bits(rec[f"{name}/value"][i], step["values"][name])
                if i == 0:
                    assert seen[0]["states"][name] == {}
                    assert not rec[f"{name}/grad"][0].any()
                    assert not rec[f"{name}/exp_avg"][0].any()
                    assert not rec[f"{name}/exp_avg_sq"][0].any()
                    assert rec[f"{name}/step"][0] == 0
                    continue
                assert_bits(rec[f"{name}/grad"][i], step["grads"][name])
                for key, value in step["states"][name].items():
                    assert_bits(rec[f"{name}/{key}"][i], value)
                assert_bits(rec[f"{name}/lr"][i], torch.tensor(step["lr"], dtype=torch.float32))
        assert rec["losses"].shape == (4,) and rec["logits"].shape == (4, VOCAB)


# -- accumulation and clipping --------------------------------------------------------------


def _sum_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Summed (not averaged) next-token loss: micro-batch losses add up to the batch's."""
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="sum"
    )


def test_watch_accumulated_grad_is_the_sum_before_clipping(tmp_path: Path) -> None:
    """4 micro-batches of 1 then a tight clip, against the same 4 rows as one batch.

    The recorded gradient is bit for bit what the loop held before clipping. Against the
    big batch it agrees to fp64 rounding only: the big batch's weight gradient is one
    reduction over all 4 x 8 tokens, the accumulated one four reductions added in turn, and
    float addition is not associative (fp64 parameters keep that difference near 1e-16).
    """
    (ids,) = token_batches(1, 4)
    runs = {}
    for mode in ("accumulated", "big batch"):
        model = tiny_llama(torch.float64)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        path = tmp_path / f"{mode}.zarr"
        with wordybird.watch(model, optimizer, wordybird.StreamingRecorder(path), parameters=THREE):
            if mode == "accumulated":
                for row in ids.split(1):
                    _sum_loss(model, row).backward()
            else:
                _sum_loss(model, ids).backward()
            params = dict(model.named_parameters())
            held = {n: params[n].grad.clone() for n in THREE}
            # the big batch is not clipped: an infinite bound scales by exactly 1
            bound = 1e-3 if mode == "accumulated" else math.inf
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), bound)
            clipped = {n: params[n].grad.clone() for n in THREE}
            optimizer.step()
        runs[mode] = (path, held, norm, clipped)

    (acc, held, norm, clipped), (big, big_held, big_norm, _) = runs.values()
    with wordybird.open(acc) as rec, wordybird.open(big) as ref:
        assert rec.steps.tolist() == ref.steps.tolist() == [1]
        for name in THREE:
            got = rec[f"{name}/grad"][0]
            assert_bits(got, held[name])
            assert_bits(ref[f"{name}/grad"][0], big_held[name])
            torch.testing.assert_close(got, ref[f"{name}/grad"][0], rtol=1e-12, atol=1e-15)
            # clipping scaled the gradient the optimizer used, not the recorded one
            clip = 1e-3 / (float(norm) + 1e-6)
            assert clip < 0.1
            torch.testing.assert_close(clipped[name], got * clip, rtol=1e-12, atol=0)
        torch.testing.assert_close(rec["grad_norms"][0], norm.float(), rtol=1e-6, atol=0)
        torch.testing.assert_close(rec["grad_norms"][0], big_norm.float(), rtol=1e-6, atol=0)


def test_trainer_accumulation_of_4_records_one_big_batchs_grad_before_clipping(
    tmp_path: Path,
) -> None:
    """The Trainer, batch 1 x accumulation 4 with a tight clip, against batch 4 without.

    Both Trainer losses are means over the step's tokens (the Trainer passes the step's
    token count to the model), so the accumulated gradient is the big batch's up to fp64
    rounding (see the plain-loop test above for why not bit for bit).
    """
    data = token_dataset(4)
    recorded = {}
    for mode, changes in {
        "accumulated": {
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 4,
            "max_grad_norm": 1e-3,
        },
        "big batch": {"per_device_train_batch_size": 4, "max_grad_norm": 0.0},
    }.items():
        model = tiny_llama(torch.float64)
        params = dict(model.named_parameters())
        optimizer_grads: dict[str, torch.Tensor] = {}

        class Probe(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                optimizer_grads.update({n: params[n].grad.clone() for n in THREE})  # noqa: B023

        path = tmp_path / f"{mode}.zarr"
        callback = wordybird.RecorderCallback(
            wordybird.StreamingRecorder(path), parameters=THREE, record_initial=False
        )
        args = trainer_args(tmp_path / mode, max_steps=1, **changes)
        Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, Probe()]).train()
        recorded[mode] = (wordybird.open(path), optimizer_grads)

    (acc, acc_used), (big, big_used) = recorded.values()
    with acc, big:
        assert acc.steps.tolist() == big.steps.tolist() == [1]
        norm = acc["grad_norms"][0]
        torch.testing.assert_close(norm, big["grad_norms"][0], rtol=1e-6, atol=0)
        total = torch.stack([g.norm() for g in big_used.values()]).norm()  # of THREE only
        assert norm >= total.float() > 0
        clip = 1e-3 / (float(norm) + 1e-6)  # clip_grad_norm_'s factor from the pre-clip norm
        assert clip < 0.1
        for name in THREE:
            got = acc[f"{name}/grad"][0]
            assert got.dtype == torch.float64
            assert_bits(big[f"{name}/grad"][0], big_used[name])  # no clipping: what it used
            torch.testing.assert_close(got, big[f"{name}/grad"][0], rtol=1e-12, atol=1e-15)
            # the optimizer got the recorded gradient scaled down by the clip
            torch.testing.assert_close(acc_used[name], got * clip, rtol=1e-5, atol=0)
        # the loss is the step's mean either way
        torch.testing.assert_close(acc["losses"][0], big["losses"][0], rtol=1e-2, atol=0)


# -- a nanoGPT-style loop -------------------------------------------------------------------


def test_watch_in_a_nanogpt_style_loop(tmp_path: Path) -> None:
    """nanoGPT's loop shape: two AdamW groups (decay on matrices only), the LR set by hand
    each iteration, gradient accumulation, a (disabled) GradScaler, clipping."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4,
        betas=(0.9, 0.95),
    )
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    max_iters, accumulation = 4, 2
    data = token_batches(max_iters * accumulation, 2, seed=1)
    wte, ln = "transformer.wte.weight", "transformer.h.1.ln_1.weight"
    params = dict(model.named_parameters())

    def get_lr(it: int) -> float:  # cosine decay, as nanoGPT's
        return 6e-5 + 0.5 * (1 + math.cos(math.pi * it / max_iters)) * (6e-4 - 6e-5)

    recorder = wordybird.StreamingRecorder(tmp_path / "rec.zarr")
    run = wordybird.watch(model, optimizer, recorder, parameters=[wte, ln])
    losses, lrs, finals = [], [], []
    for it in range(max_iters):
        lr = get_lr(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(accumulation):
            ids = data[it * accumulation + micro]
            loss = model(input_ids=ids, labels=ids).loss / accumulation
            scaler.scale(loss).backward()
        run.log(losses=loss.detach() * accumulation)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) * accumulation)
        lrs.append(lr)
        finals.append(state_copy(optimizer, params[wte]))
    run.close()

    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert rec.steps.tolist() == [1, 2, 3, 4]
        assert set(rec.fields) == {
            *(f"{wte}/{k}" for k in ("value", "grad", "lr", "step", "exp_avg", "exp_avg_sq")),
            *(f"{ln}/{k}" for k in ("value", "grad", "lr", "step", "exp_avg", "exp_avg_sq")),
            "losses",
            "grad_norms",
        }
        # GPT-2 ties lm_head to wte: one parameter, recorded once under the name asked for
        assert model.lm_head.weight is params[wte]
        assert_bits(rec[f"{wte}/value"][-1], params[wte].detach())
        assert_bits(rec[f"{ln}/value"][-1], params[ln].detach())
        for i in range(max_iters):
            assert_bits(rec[f"{wte}/exp_avg_sq"][i], finals[i]["exp_avg_sq"])
            assert_bits(rec[f"{wte}/step"][i], finals[i]["step"])
            assert rec[f"{wte}/lr"][i] == rec[f"{ln}/lr"][i] == torch.tensor(lrs[i])
            torch.testing.assert_close(rec["losses"][i], torch.tensor(losses[i]))
        assert rec.metadata["optimizer"]["param_groups"][1]["weight_decay"] == 0.0


class TwoBranches(torch.nn.Module):
    """Two linear maps; a step may use both or only the first (the second gets no grad)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, both: bool) -> torch.Tensor:
        return (self.a(x) + self.b(x) if both else self.a(x)).square().sum()


def test_watch_with_a_grad_scaler_records_unscaled_grads_and_not_the_skipped_step(
    tmp_path: Path,
) -> None:
    """An fp16-style loop with a GradScaler (scale 2^10): the recorded gradient is the one
    ``scaler.unscale_`` hands the optimizer, not backward's scaled one. A step the scaler
    skips on an inf is not recorded, and leaves nothing behind: the next step, whose loss
    does not reach ``b``, records ``b``'s gradient as zero, not the skipped step's infs."""
    model = TwoBranches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    recorder = wordybird.StreamingRecorder(tmp_path / "rec.zarr")
    run = wordybird.watch(
        model, optimizer, recorder, parameters=["a.weight", "b.weight"], scaler=scaler
    )
    held, norms = [], []
    for scale_loss, both in ((1.0, True), (math.inf, True), (1.0, False)):
        scaler.scale(model(x, both) * scale_loss).backward()
        scaler.unscale_(optimizer)
        held.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        scaler.step(optimizer)  # skipped on the inf
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    run.close()

    assert scaler.get_scale() == 2.0**9  # the inf halved it: the second step was skipped
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert rec.steps.tolist() == [1, 2]  # optimizer steps taken: the skipped one is not
        for step, taken in ((0, 0), (1, 2)):
            assert_bits(rec["a.weight/grad"][step], held[taken]["a.weight"])
            torch.testing.assert_close(rec["grad_norms"][step], norms[taken], rtol=1e-6, atol=0)
        assert_bits(rec["b.weight/grad"][0], held[0]["b.weight"])
        assert "b.weight" not in held[2]  # no gradient at all in the last step
        assert_bits(rec["b.weight/grad"][1], torch.zeros(3, 4))


def test_watch_records_through_an_accelerate_prepared_optimizer(tmp_path: Path) -> None:
    """``Accelerator.prepare`` wraps the optimizer (no step hooks of its own): watch hooks
    the optimizer inside, and records its state bit for bit."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = tiny_llama()
    model, optimizer = accelerator.prepare(model, _adamw(model.parameters()))
    assert type(optimizer).__name__ == "AcceleratedOptimizer"
    params = dict(model.named_parameters())
    finals = []
    with wordybird.watch(
        model, optimizer, wordybird.StreamingRecorder(tmp_path / "rec.zarr"), parameters=THREE
    ):
        for ids in token_batches(3, 2):
            accelerator.backward(model(input_ids=ids, labels=ids).loss)
            optimizer.step()
            optimizer.zero_grad()
            finals.append({n: state_copy(optimizer.optimizer, params[n]) for n in THREE})
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert rec.steps.tolist() == [1, 2, 3]
        for i, states in enumerate(finals):
            for name in THREE:
                for key, value in states[name].items():
                    assert_bits(rec[f"{name}/{key}"][i], value)
        assert rec.metadata["optimizer"]["class"] == "AdamW"


# -- rows= ----------------------------------------------------------------------------------


def test_rows_round_trip_through_the_store_and_an_export(tmp_path: Path) -> None:
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    params = dict(model.named_parameters())
    embed_rows = [63, 0, 5, 5]  # any order, repeats: recorded sorted, once each
    mask = np.zeros(16, dtype=bool)
    mask[[1, 2, 15]] = True
    rows = {EMBED: embed_rows, NORM: mask}
    chosen = {EMBED: torch.tensor([0, 5, 63]), NORM: torch.tensor([1, 2, 15])}
    path = tmp_path / "rec.zarr"
    full: list[dict[str, dict[str, torch.Tensor]]] = []
    with wordybird.watch(
        model, optimizer, wordybird.StreamingRecorder(path), parameters=[EMBED, NORM], rows=rows
    ):
        for ids in token_batches(2, 2):
            model(input_ids=ids, labels=ids).loss.backward()
            grads = {n: params[n].grad.clone() for n in chosen}
            optimizer.step()
            full.append(
                {
                    n: {
                        "value": params[n].detach().clone(),
                        "grad": grads[n],
                        **state_copy(optimizer, params[n]),
                    }
                    for n in chosen
                }
            )
            optimizer.zero_grad()

    out = tmp_path / "rec.safetensors"
    assert wordybird.export(path, out) == out
    with wordybird.open(path) as rec, wordybird.open(out) as exported:
        assert sorted(exported.fields) == sorted(rec.fields)
        assert exported.steps.tolist() == rec.steps.tolist() == [1, 2]
        for name, index in chosen.items():
            assert rec[f"{name}/value"].shape == (2, len(index), *params[name].shape[1:])
            for i, step in enumerate(full):
                assert_bits(rec[f"{name}/rows"][i], index)
                for key in ("value", "grad", "exp_avg", "exp_avg_sq"):
                    assert_bits(rec[f"{name}/{key}"][i], step[name][key][index])
                assert_bits(rec[f"{name}/step"][i], step[name]["step"])
        for field in rec.fields:
            assert_bits(exported[field][:], rec[field][:])


def test_rows_refused_when_out_of_range_or_for_an_unrecorded_parameter(tmp_path: Path) -> None:
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = wordybird.StreamingRecorder(tmp_path / "rec.zarr")
    with pytest.raises(WordybirdError, match=r"has rows 0\.\.63; got indices 0\.\.64"):
        wordybird.watch(model, optimizer, recorder, parameters=[EMBED], rows=[0, 64])
    with pytest.raises(WordybirdError, match="not recorded parameters"):
        wordybird.watch(model, optimizer, recorder, parameters=[EMBED], rows={NORM: [0]})
    with pytest.raises(WordybirdError, match=r"needs shape \(64,\)"):
        wordybird.watch(model, optimizer, recorder, parameters=[EMBED], rows=np.ones(8, bool))
    recorder.close()


# -- choosing parameters --------------------------------------------------------------------


def _recorded_parameters(path: Path) -> set[str]:
    with wordybird.open(path) as rec:
        return {f.rsplit("/", 1)[0] for f in rec.fields if "/" in f}


def _one_step(model: torch.nn.Module, path: Path, **watch_options: Any) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with wordybird.watch(model, optimizer, wordybird.StreamingRecorder(path), **watch_options):
        (ids,) = token_batches(1, 2)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


def test_an_unknown_parameter_name_lists_close_matches(tmp_path: Path) -> None:
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    recorder = wordybird.StreamingRecorder(tmp_path / "rec.zarr")
    with pytest.raises(WordybirdError) as caught:
        wordybird.watch(model, optimizer, recorder, parameters=[EMBED, "model.layers.0.q_proj"])
    message = str(caught.value)
    assert "no parameter matching 'model.layers.0.q_proj'" in message
    assert "model.layers.0.self_attn.q_proj.weight" in message.split("; close: ")[1]
    with pytest.raises(WordybirdError, match="no parameter matching 'nothing.like.this.*'"):
        wordybird.RecorderCallback(recorder, parameters=["nothing.like.this.*"])._install(
            model, optimizer
        )
    recorder.close()
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())  # none left


def test_glob_patterns_and_a_predicate_choose_parameters(tmp_path: Path) -> None:
    _one_step(tiny_llama(), tmp_path / "glob.zarr", parameters="model.layers.*.self_attn.q_proj.*")
    assert _recorded_parameters(tmp_path / "glob.zarr") == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    }

    def is_norm(name: str, param: torch.nn.Parameter) -> bool:
        return param.dim() == 1

    _one_step(tiny_llama(), tmp_path / "pred.zarr", parameters=is_norm)
    assert _recorded_parameters(tmp_path / "pred.zarr") == {
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        NORM,
    }


def test_tied_weights_are_recorded_once_with_both_contributions(tmp_path: Path) -> None:
    model = tiny_llama(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _one_step(model, tmp_path / "both.zarr", parameters=["lm_head.weight", EMBED])
    assert _recorded_parameters(tmp_path / "both.zarr") == {"lm_head.weight"}
    _one_step(tiny_llama(tied=True), tmp_path / "all.zarr", parameters="*")
    recorded = _recorded_parameters(tmp_path / "all.zarr")
    assert EMBED in recorded and "lm_head.weight" not in recorded
    assert len(recorded) == len(list(model.parameters()))

    # the one gradient holds the input embedding's and the output layer's contributions
    model = tiny_llama(tied=True)
    (ids,) = token_batches(1, 2)
    model(input_ids=ids, labels=ids).loss.backward()
    want = model.lm_head.weight.grad.clone()
    with wordybird.open(tmp_path / "both.zarr") as rec:
        assert_bits(rec["lm_head.weight/grad"][0], want)


# -- store_dtype= ---------------------------------------------------------------------------


def test_store_dtype_bf16_narrows_tensors_and_says_so(tmp_path: Path) -> None:
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    params = dict(model.named_parameters())
    path = tmp_path / "rec.zarr"
    with wordybird.watch(
        model,
        optimizer,
        wordybird.StreamingRecorder(path),
        parameters=[EMBED, NORM],
        store_dtype=torch.bfloat16,
        rows={EMBED: [1, 2]},
    ):
        (ids,) = token_batches(1, 2)
        model(input_ids=ids, labels=ids).loss.backward()
        grads = {n: params[n].grad.clone() for n in (EMBED, NORM)}
        optimizer.step()
    narrowed = {
        f"{n}/{k}" for n in (EMBED, NORM) for k in ("value", "grad", "exp_avg", "exp_avg_sq")
    }
    with wordybird.open(path) as rec:
        for field in rec.fields:
            want = (
                torch.bfloat16
                if field in narrowed
                else torch.int64
                if field.endswith("/rows")
                else torch.float32
            )
            assert rec[field].dtype == want, field
        for name in (EMBED, NORM):
            index = slice(1, 3) if name == EMBED else slice(None)
            state = optimizer.state[params[name]]
            assert_bits(rec[f"{name}/value"][0], params[name].detach()[index].bfloat16())
            assert_bits(rec[f"{name}/grad"][0], grads[name][index].bfloat16())
            assert_bits(rec[f"{name}/exp_avg_sq"][0], state["exp_avg_sq"][index].bfloat16())
            assert_bits(rec[f"{name}/step"][0], state["step"])  # scalars keep their dtype
        meta = rec.metadata["store_dtype"]
        assert meta["dtype"] == "bfloat16"
        assert set(meta["fields"]) == narrowed
        assert "lossy" in meta["note"]


# -- resuming -------------------------------------------------------------------------------


def test_a_resumed_watch_recording_continues_the_step_numbers(tmp_path: Path) -> None:
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "rec.zarr"
    batches = iter(token_batches(5, 2))
    buffers = []

    def train(run: wordybird.Watch, steps: int) -> None:
        for _ in range(steps):
            ids = next(batches)
            model(input_ids=ids, labels=ids).loss.backward()
            run.log(losses=torch.tensor(float(len(buffers))))
            optimizer.step()
            buffers.append(optimizer.state[model.lm_head.weight]["momentum_buffer"].clone())
            optimizer.zero_grad()

    with wordybird.watch(
        model, optimizer, wordybird.StreamingRecorder(path), parameters="lm_head.weight"
    ) as run:
        train(run, 2)
    with wordybird.watch(
        model,
        optimizer,
        wordybird.StreamingRecorder(path, resume=True),
        parameters="lm_head.weight",
    ) as run:
        assert run.step == 2
        train(run, 3)
    with wordybird.open(path) as rec:
        assert rec.steps.tolist() == [1, 2, 3, 4, 5]
        assert rec["losses"][:].tolist() == [0, 1, 2, 3, 4]
        for i, buffer in enumerate(buffers):
            assert_bits(rec["lm_head.weight/momentum_buffer"][i], buffer)
