"""wordybird.training: tokenizer, data, fp32-compute model, RecorderCallback, train/continue/resume.

Tiny shapes throughout (GPT-2's vocabulary, 8-wide embeddings, 16-token windows, batch 2).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

import wordybird
from wordybird.errors import WordybirdError
from wordybird.training import experiments
from wordybird.training.control import RunControl
from wordybird.training.data import TokenDataset, read_corpus, token_masks, tokenize
from wordybird.training.experiments import TrainConfig, continue_training, resume, train
from wordybird.training.model import ModelConfig, build_model, compute_in
from wordybird.training.schedules import WordybirdTrainer
from wordybird.training.tokenizer import load_tokenizer

TINY = ModelConfig(n_embd=8, n_layer=1, n_head=1, n_positions=16)
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "the",
    "of",
    "and",
    "cat",
    "dog",
    "runs",
    "fast",
    "slow",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    gen = torch.Generator().manual_seed(0)
    picks = torch.randint(len(WORDS), (1500,), generator=gen).tolist()
    path.write_text(" ".join(WORDS[i] for i in picks), encoding="utf-8")
    return path


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def config(corpus: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(steps=4, batch_size=2, corpus=str(corpus), model=TINY)
    return TrainConfig(**{**base.__dict__, **changes})


def test_tokenizer_is_gpt2_offline() -> None:
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 50257
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_importing_changes_no_environment_variable() -> None:
    """Importing the package (directly, or through ``wordybird.RecorderCallback``) leaves
    the environment as it was: a script that records its own Trainer run must still be able
    to download its model, and its child processes inherit nothing of ours."""
    code = """
import os
import huggingface_hub, torch, transformers  # what these do at import is theirs
before = dict(os.environ)
import wordybird
wordybird.RecorderCallback
import wordybird.training.cli, wordybird.training.experiments
changed = {k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k)}
assert not changed, changed
assert not huggingface_hub.is_offline_mode()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_masks_mark_exactly_the_corpus_tokens(corpus: Path) -> None:
    tokens = tokenize(read_corpus(corpus))
    masks = token_masks(tokens)
    assert set(masks["trained_indices"].tolist()) == set(tokens.tolist())
    assert masks["trained_mask"].dtype == torch.bool
    assert masks["untrained_indices"].dtype == torch.int64
    assert (masks["trained_mask"] ^ masks["untrained_mask"]).all()
    assert len(masks["trained_indices"]) + len(masks["untrained_indices"]) == 50257


def test_token_dataset_windows() -> None:
    data = TokenDataset(torch.arange(20), seq_len=4)
    assert len(data) == 16
    item = data[3]
    assert item["input_ids"].tolist() == [3, 4, 5, 6]
    assert item["labels"].tolist() == [4, 5, 6, 7]
    with pytest.raises(WordybirdError, match="fewer than one training window"):
        TokenDataset(torch.arange(4), seq_len=4)


def test_fp32_compute_keeps_bf16_params_tied_and_grads_bf16() -> None:
    model = build_model(TINY, seed=0).eval()
    reference = build_model(TINY, seed=0).float().eval()
    compute_in(model, torch.float32)
    ids = torch.randint(50257, (2, 16))
    out = model(input_ids=ids, labels=ids)
    ref = reference(input_ids=ids, labels=ids)
    out.loss.backward()
    ref.loss.backward()
    wte = model.transformer.wte.weight
    assert wte.dtype == torch.bfloat16 and wte.grad.dtype == torch.bfloat16
    assert model.lm_head.weight is wte
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(
        wte.grad.float(), reference.transformer.wte.weight.grad, atol=1e-4, rtol=1e-2
    )


class _Capture(TrainerCallback):
    """What the Trainer really holds: clipped grads before the step, state after it."""

    def __init__(self) -> None:
        self.clipped: dict[int, torch.Tensor] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.clipped[state.global_step + 1] = model.transformer.wte.weight.grad.clone()

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        p = model.transformer.wte.weight
        self.after[state.global_step] = {
            "embeddings": p.detach().clone(),
            "momentum": optimizer.state[p]["exp_avg"].clone(),
            "variance": optimizer.state[p]["exp_avg_sq"].clone(),
        }


def test_recorded_step_is_what_the_trainer_held(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = _Capture()
    original = WordybirdTrainer.__init__

    def init_with_capture(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(capture)

    monkeypatch.setattr(WordybirdTrainer, "__init__", init_with_capture)
    # a tiny clipping norm makes every step's clipping matter
    result = train(config(corpus, steps=3, max_grad_norm=1e-3), tmp_path / "run")

    with wordybird.open(tmp_path / "run" / "recording.zarr") as rec:
        assert rec.steps.tolist() == [0, 1, 2, 3]
        assert rec.metadata["starting_step"] == 0
        assert torch.equal(rec["momentum"][0], torch.zeros(50257, 8, dtype=torch.bfloat16))
        assert torch.isnan(rec["losses"][0].float())
        for i, step in enumerate(rec.steps.tolist()[1:], start=1):
            for name, held in capture.after[step].items():
                assert torch.equal(rec[name][i], held), (name, step)
            grads, norm = rec["grads"][i], rec["grad_norms"][i]
            assert grads.dtype == torch.bfloat16 and norm.dtype == torch.float32
            assert not torch.equal(grads, capture.clipped[step])  # recorded before clipping
            coefficient = 1e-3 / (norm + 1e-6)
            torch.testing.assert_close(
                capture.clipped[step].float(), grads.float() * coefficient, atol=1e-6, rtol=2e-2
            )
            assert rec["learning_rates"][i].item() == pytest.approx(1e-3 * (4 - step) / 3)
            assert rec["logits"][i].dtype == torch.bfloat16 and rec["logits"][i].shape == (50257,)
            assert rec["losses"][i].float().item() > 0
    assert result.summary["recorded_steps"] == 4
    assert (tmp_path / "run" / "checkpoint-3" / "optimizer.pt").is_file()


@pytest.fixture(scope="module")
def wb1(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wb1") / "run"
    train(config(corpus, steps=3), out)
    return out


def _embedding_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    (entry,) = [s for s in state.values() if s["exp_avg"].shape == (50257, 8)]
    return entry


def test_continue_restores_adam_state(wb1: Path, corpus: Path, tmp_path: Path) -> None:
    continue_training(wb1 / "checkpoint-3", tmp_path / "wb3", config(corpus, steps=2))
    saved = _embedding_state(wb1 / "checkpoint-3")
    with (
        wordybird.open(tmp_path / "wb3" / "recording.zarr") as rec,
        wordybird.open(wb1 / "recording.zarr") as before,
    ):
        assert rec.steps.tolist() == [3, 4, 5]
        assert rec.metadata["starting_step"] == 3
        assert torch.equal(rec["momentum"][0], saved["exp_avg"])
        assert torch.equal(rec["variance"][0], saved["exp_avg_sq"])
        assert torch.equal(rec["momentum"][0], before["momentum"][-1])
        assert torch.equal(rec["embeddings"][0], before["embeddings"][-1])
        # restart: a new linear decay from the base LR over the two new steps
        assert rec["learning_rates"][1:].tolist() == pytest.approx([1e-3, 5e-4])
    assert (tmp_path / "wb3" / "checkpoint-5").is_dir()


def test_continue_fresh_optimizer_starts_adam_at_zero(
    wb1: Path, corpus: Path, tmp_path: Path
) -> None:
    continue_training(
        wb1 / "checkpoint-3", tmp_path / "wb3", config(corpus, steps=1), fresh_optimizer=True
    )
    with wordybird.open(tmp_path / "wb3" / "recording.zarr") as rec:
        assert not rec["momentum"][0].any() and not rec["variance"][0].any()
        # Adam's first step from zero: exp_avg_sq = (1 - beta2) * grad^2, nothing older
        assert rec["variance"][1].any()


def test_continue_from_weights_only_needs_fresh_optimizer(
    wb1: Path, corpus: Path, tmp_path: Path
) -> None:
    """A folder of weights only, as ``save_pretrained`` writes them (what the notebook's
    ``from_pretrained`` loaded), has no Adam state to continue: refused unless declined,
    and then trained from step 0 with a fresh optimizer, as the notebook did."""
    from wordybird.training.checkpoints import load_checkpoint_model

    weights = tmp_path / "weights"
    load_checkpoint_model(wb1 / "checkpoint-3").save_pretrained(weights)
    with pytest.raises(WordybirdError, match="holds model weights only.*--fresh-optimizer"):
        continue_training(weights, tmp_path / "refused", config(corpus, steps=2))
    assert not (tmp_path / "refused").exists()

    continue_training(weights, tmp_path / "wb3", config(corpus, steps=2), fresh_optimizer=True)
    with (
        wordybird.open(tmp_path / "wb3" / "recording.zarr") as rec,
        wordybird.open(wb1 / "recording.zarr") as before,
    ):
        assert rec.steps.tolist() == [0, 1, 2]
        assert torch.equal(rec["embeddings"][0], before["embeddings"][-1])  # the saved weights
        assert not rec["momentum"][0].any() and rec["variance"][1].any()
        assert rec["learning_rates"][1:].tolist() == pytest.approx([1e-3, 5e-4])


def test_continue_inherits_the_settings_of_the_checkpoints_run(tmp_path: Path) -> None:
    from wordybird.training.config import RunPlan, write_run_file
    from wordybird.training.continuing import inherit_settings

    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    ran = TrainConfig(corpus="/data/toy.txt", batch_size=3, seed=7, mode="compact")
    write_run_file(run, RunPlan(ran))
    asked = TrainConfig(steps=9, batch_size=5)

    got, sources = inherit_settings(run / "checkpoint-5", asked, given={"batch_size"})
    assert got == TrainConfig(steps=9, batch_size=5, corpus="/data/toy.txt", seed=7, mode="compact")
    assert sources == {"corpus": "run", "batch_size": "given", "seed": "run", "mode": "run"}

    (tmp_path / "elsewhere").mkdir()  # a checkpoint with no run file beside it
    got, sources = inherit_settings(tmp_path / "elsewhere", asked, given=())
    assert got == asked
    assert set(sources.values()) == {"default"}


def test_runs_switch_the_hub_offline_while_they_work(
    wb1: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No environment variable says so (see the import test): each run turns
    huggingface_hub's offline mode on for its duration, and back off after."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    offline_at_steps: list[bool] = []
    original = RunControl.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        offline_at_steps.append(huggingface_hub.is_offline_mode())
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(RunControl, "on_step_end", on_step_end)
    train(config(corpus, steps=1), tmp_path / "wb1")
    continue_training(wb1 / "checkpoint-3", tmp_path / "wb3", config(corpus, steps=1))
    assert offline_at_steps == [True, True]
    assert not huggingface_hub.is_offline_mode()


@pytest.mark.parametrize(("schedule", "expected"), [("constant", 1e-3 / 3), ("continue", 0.0)])
def test_continue_schedules(
    wb1: Path, corpus: Path, tmp_path: Path, schedule: str, expected: float
) -> None:
    expect_warning = schedule == "continue"
    with pytest.warns(UserWarning, match="stays 0") if expect_warning else nullcontext():
        continue_training(
            wb1 / "checkpoint-3", tmp_path / "wb3", config(corpus, steps=2), schedule=schedule
        )
    with wordybird.open(tmp_path / "wb3" / "recording.zarr") as rec:
        assert rec["learning_rates"][1:].tolist() == pytest.approx([expected, expected])


def test_interrupt_then_resume_equals_uninterrupted_run(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(corpus, steps=5)
    train(cfg, tmp_path / "whole")

    original = RunControl.on_step_end

    def interrupt_at_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C would
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(RunControl, "on_step_end", interrupt_at_3)
    with pytest.raises(WordybirdError, match=r"interrupted after step 3.*checkpoint-3"):
        train(cfg, tmp_path / "cut")
    with wordybird.open(tmp_path / "cut" / "recording.zarr") as rec:
        assert rec.steps.tolist() == [0, 1, 2, 3]
    monkeypatch.undo()

    resume(tmp_path / "cut")
    with (
        wordybird.open(tmp_path / "cut" / "recording.zarr") as got,
        wordybird.open(tmp_path / "whole" / "recording.zarr") as want,
    ):
        assert got.steps.tolist() == want.steps.tolist() == [0, 1, 2, 3, 4, 5]
        for name in want.fields:
            assert_same_bits(got[name][0:6], want[name][0:6])


@pytest.mark.parametrize("checkpoint_4", ["absent", "half-written"])
def test_resume_cuts_back_steps_recorded_after_the_checkpoint(
    corpus: Path, tmp_path: Path, checkpoint_4: str
) -> None:
    """A crash after checkpoint 2 but with steps 3-4 committed: resume re-runs them. So it
    does when the crash came while checkpoint 4 was being saved: trainer_state.json, which
    the Trainer writes last, is missing from it."""
    import shutil

    cfg = config(corpus, steps=4, checkpoint_every=2)
    train(cfg, tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "crashed")
    if checkpoint_4 == "absent":
        shutil.rmtree(tmp_path / "crashed" / "checkpoint-4")
    else:
        (tmp_path / "crashed" / "checkpoint-4" / "trainer_state.json").unlink()
    resume(tmp_path / "crashed")
    with (
        wordybird.open(tmp_path / "crashed" / "recording.zarr") as got,
        wordybird.open(tmp_path / "whole" / "recording.zarr") as want,
    ):
        assert got.steps.tolist() == [0, 1, 2, 3, 4]
        for name in want.fields:
            assert_same_bits(got[name][0:5], want[name][0:5])


def test_a_run_killed_while_being_overwritten_is_not_resumed(
    wb1: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite deletes the old run's files one by one: a process killed in the middle
    must leave nothing that --resume would continue into a half-deleted recording."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(wb1, run)

    class Killed(BaseException):
        pass

    def killed(path: object, *args: object, **kwargs: object) -> None:
        raise Killed  # the first folder the clearing deletes: the recording

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(Killed):
        train(config(corpus, steps=3), run, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(WordybirdError, match="holds no run"):
        resume(run)
    train(config(corpus, steps=3), run, overwrite=True)  # which clears it
    with wordybird.open(run / "recording.zarr") as rec:
        assert rec.steps.tolist() == [0, 1, 2, 3]


def test_resume_refuses_a_recording_missing_steps_and_closes_it(
    corpus: Path, tmp_path: Path
) -> None:
    import shutil
    import threading

    from wordybird import StreamingRecorder

    train(config(corpus, steps=4, checkpoint_every=2), tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    with StreamingRecorder(tmp_path / "run" / "recording.zarr", resume=True) as rec:
        rec.truncate(1)  # checkpoint-2 needs steps 0..2
    with pytest.raises(WordybirdError, match="cannot resume.*ends at step 1"):
        resume(tmp_path / "run")
    writers = [t for t in threading.enumerate() if t.name == "wordybird-writer"]
    assert not writers, "the refused resume left its recorder's writer running"


def test_record_every_and_no_record(corpus: Path, tmp_path: Path) -> None:
    train(config(corpus, steps=4, record_every=2), tmp_path / "sparse")
    with wordybird.open(tmp_path / "sparse" / "recording.zarr") as rec:
        assert rec.steps.tolist() == [0, 2, 4]
    result = train(config(corpus, steps=2, record_every=None), tmp_path / "none")
    assert not (tmp_path / "none" / "recording.zarr").exists()
    assert (tmp_path / "none" / "checkpoint-2").is_dir()
    assert math.isfinite(result.summary["loss_last"]["loss"])


def test_durable_runs_fsync_their_recording(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """durable=True reaches the recorder, and a resumed run keeps it (from its run.json)."""
    import shutil

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = tmp_path / "run"
    train(config(corpus, steps=2, checkpoint_every=1, durable=True), run)
    assert any("recording.zarr" in path for path in synced)
    shutil.rmtree(run / "checkpoint-2")
    synced.clear()
    resume(run)
    assert any("recording.zarr" in path for path in synced)


def test_train_cli_passes_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from wordybird.training.cli import train as train_command

    configs: list[TrainConfig] = []
    monkeypatch.setattr(experiments, "train", lambda c, out, **places: configs.append(c))
    monkeypatch.setattr(experiments, "format_summary", lambda result: "")
    for args in (["--durable"], []):
        done = CliRunner().invoke(train_command, ["--out", str(tmp_path), *args])
        assert done.exit_code == 0, done.output
    assert [c.durable for c in configs] == [True, False]


def plain_trainer_args(tmp_path: Path, **changes: Any) -> TrainingArguments:
    """Arguments of a plain Trainer run of two tiny steps, without checkpoints or logs."""
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    return TrainingArguments(**{**settings, **changes})


def test_recorder_callback_drops_into_a_plain_trainer(corpus: Path, tmp_path: Path) -> None:
    from transformers import Trainer

    from wordybird import RecorderCallback, StreamingRecorder

    model = build_model(TINY, seed=1, param_dtype=torch.float32)
    data = TokenDataset(tokenize(read_corpus(corpus)), 16)
    recorder = StreamingRecorder(tmp_path / "rec.zarr")
    callback = RecorderCallback(recorder, parameters=["transformer.wpe.weight"])
    args = plain_trainer_args(tmp_path)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    param = model.transformer.wpe.weight
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert rec.steps.tolist() == [0, 1, 2]
        assert rec["transformer.wpe.weight/value"].shape == (3, 16, 8)
        assert rec["transformer.wpe.weight/value"].dtype == torch.float32
        assert torch.equal(rec["transformer.wpe.weight/value"][-1], param.detach())
        state = trainer.optimizer.state[param]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(rec[f"transformer.wpe.weight/{key}"][-1], state[key])
        assert rec.metadata["optimizer"]["class"] == "AdamW"


def _tensors_held_by(obj: object) -> list[torch.Tensor]:
    """Every tensor reachable from an object's attributes (through dicts, lists, tuples)."""
    found, todo = [], list(vars(obj).values())
    while todo:
        item = todo.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return found


def test_callback_holds_no_activation_after_a_step(corpus: Path, tmp_path: Path) -> None:
    """Only copies of what is recorded stay between steps: no view pins a whole activation."""
    from transformers import Trainer, TrainerCallback

    from wordybird import RecorderCallback, StreamingRecorder

    model = build_model(TINY, seed=1, param_dtype=torch.float32)
    data = TokenDataset(tokenize(read_corpus(corpus)), 16)
    recorder = StreamingRecorder(tmp_path / "rec.zarr")
    callback = RecorderCallback(recorder)
    activations: list[int] = []  # storage addresses of every forward's logits
    model.register_forward_hook(
        lambda module, args, output: activations.append(output.logits.untyped_storage().data_ptr())
    )
    checked: list[int] = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # after RecorderCallback's
            held = _tensors_held_by(callback)
            assert held, "the callback should hold its step's loss, logits and grad"
            for tensor in held:
                assert tensor.untyped_storage().data_ptr() not in activations
                assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
            checked.append(state.global_step)

    args = plain_trainer_args(tmp_path)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, Probe()]).train()
    assert checked == [1, 2]
    assert activations, "the model's forward never ran"


class _Alternating(torch.nn.Module):
    """A model whose ``sometimes`` parameter takes part in every other forward only."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.always = torch.nn.Parameter(torch.randn(6, 4, generator=g))
        self.sometimes = torch.nn.Parameter(torch.randn(6, 4, generator=g))
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        self.calls += 1
        x = self.always.sum(1)
        if self.calls % 2:
            x = x + self.sometimes.square().sum(1)
        logits = x.expand(input_ids.shape[0], input_ids.shape[1], 6)  # "vocab" = rows
        return {"loss": (x - 1).square().mean(), "logits": logits}


def _train_alternating(tmp_path: Path, optimizer_cls: type | None, steps: int = 4) -> Path:
    from transformers import Trainer

    from wordybird import RecorderCallback, StreamingRecorder

    model = _Alternating()
    data = [{"input_ids": torch.zeros(3, dtype=torch.long)}] * 16
    recorder = StreamingRecorder(tmp_path / "rec.zarr")
    callback = RecorderCallback(recorder, parameters=["sometimes"])
    args = plain_trainer_args(tmp_path, max_steps=steps, learning_rate=0.1, max_grad_norm=0.0)
    optimizers = (None, None)
    if optimizer_cls is not None:
        optimizers = (optimizer_cls(model.parameters(), lr=0.1), None)
    trainer = Trainer(
        model=model, args=args, train_dataset=data, callbacks=[callback], optimizers=optimizers
    )
    trainer.train()
    return tmp_path / "rec.zarr"


def test_a_step_without_gradient_records_zero_not_the_last_gradient(tmp_path: Path) -> None:
    with wordybird.open(_train_alternating(tmp_path, None)) as rec:
        grads = rec["sometimes/grad"][:]
        assert rec.steps.tolist() == [0, 1, 2, 3, 4]
        # forwards 1 and 3 (steps 1, 3) use the parameter; 2 and 4 do not
        assert grads[1].abs().sum() > 0 and grads[3].abs().sum() > 0
        assert not grads[2].any() and not grads[4].any()
        # the optimizer's real state: torch's Adam skips a parameter without gradient
        assert rec["sometimes/exp_avg"][1].abs().sum() > 0
        assert torch.equal(rec["sometimes/exp_avg"][2], rec["sometimes/exp_avg"][1])


def test_an_optimizer_without_state_records_none_and_says_so(tmp_path: Path) -> None:
    """SGD without momentum holds no state: no state field is invented, and neither is the
    initial step, whose state the optimizer could not yet tell."""
    with pytest.warns(UserWarning) as caught:
        path = _train_alternating(tmp_path, torch.optim.SGD)
    messages = [str(w.message) for w in caught if "wordybird" in str(w.message)]
    assert sum("holds no state for sometimes" in m for m in messages) == 1  # said once
    assert sum("initial step is not recorded" in m for m in messages) == 1
    with wordybird.open(path) as rec:
        assert rec.steps.tolist() == [1, 2, 3, 4]
        assert sorted(f for f in rec.fields if f.startswith("sometimes/")) == [
            "sometimes/grad",
            "sometimes/lr",
            "sometimes/value",
        ]


def test_the_notebook_layout_without_adam_has_no_momentum_or_variance(
    corpus: Path, tmp_path: Path
) -> None:
    from transformers import Trainer

    from wordybird import RecorderCallback, StreamingRecorder

    model = build_model(TINY, seed=1, param_dtype=torch.float32)
    data = TokenDataset(tokenize(read_corpus(corpus)), 16)
    callback = RecorderCallback(StreamingRecorder(tmp_path / "rec.zarr"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = plain_trainer_args(tmp_path)
    with pytest.warns(UserWarning, match="no momentum/variance fields") as caught:
        Trainer(
            model=model,
            args=args,
            train_dataset=data,
            callbacks=[callback],
            optimizers=(optimizer, None),
        ).train()
    assert sum("no momentum/variance" in str(w.message) for w in caught) == 1  # said once
    with wordybird.open(tmp_path / "rec.zarr") as rec:
        assert "momentum" not in rec.fields and "variance" not in rec.fields
        assert {"embeddings", "grads", "losses"} <= set(rec.fields)
        assert len(rec) == 3


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\x00\x01\x02binary", "looks binary"),
        (b"caf\xe9 latin-1", "not UTF-8"),
        (b"too short", "fewer than one training window"),
    ],
)
def test_bad_corpus(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WordybirdError, match=message):
        train(config(path), tmp_path / "run")
    assert not (tmp_path / "run" / "recording.zarr").exists()


def test_bad_steps_and_existing_output(wb1: Path, corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(WordybirdError, match="steps must be positive"):
        train(config(corpus, steps=0), tmp_path / "run")
    steps_before = wordybird.open(wb1 / "recording.zarr").steps.tolist()
    with pytest.raises(WordybirdError, match="already holds a run"):
        train(config(corpus), wb1)
    assert wordybird.open(wb1 / "recording.zarr").steps.tolist() == steps_before


def test_bad_checkpoints(wb1: Path, corpus: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(WordybirdError, match="does not exist"):
        continue_training(tmp_path / "nowhere", tmp_path / "a", config(corpus))
    weights_only = tmp_path / "checkpoint-3"
    shutil.copytree(wb1 / "checkpoint-3", weights_only)
    (weights_only / "optimizer.pt").unlink()
    with pytest.raises(WordybirdError, match="no optimizer state.*--fresh-optimizer"):
        continue_training(weights_only, tmp_path / "b", config(corpus))
    continue_training(weights_only, tmp_path / "c", config(corpus, steps=1), fresh_optimizer=True)
    with pytest.raises(WordybirdError, match="holds no run"):
        resume(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text('{"steps": 3}')  # JSON, but not a run's
    with pytest.raises(WordybirdError, match=r"run.json is not a wordybird run file: KeyError"):
        resume(tmp_path / "other")
