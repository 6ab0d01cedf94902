"""Bad inputs a new user may give, refused without touching what is already recorded.

One test per row shape of the table in docs/bad-inputs.md; rows that other modules already
test are only referenced there. Every CLI row runs the real command in a subprocess and
checks the whole contract: exit status 1, exactly one stderr line, ``error: …`` saying what
is wrong, no traceback, and every file already on disk (recording, exports, run,
checkpoint) byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import zarr
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import wordybird
from run_cli import run_cli
from test_analysis import write_masks
from test_export import VOCAB, make_recording
from test_recorder import make_step, same_bits
from test_training import config
from wordybird import StreamingRecorder, WordybirdError
from wordybird.capture.monitor import FreezeMonitor
from wordybird.export import export_safetensors
from wordybird.training.experiments import train

#: A corpus long enough for the default model's 129-token window.
CORPUS = " ".join(f"word{i % 37} the cat" for i in range(800))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a folder."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in sorted(root.rglob("*"))
    }


def copy_checkpoint(source: Path, dest: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a checkpoint to damage, without the files in ``drop``."""
    shutil.copytree(source, dest)
    for name in drop:
        (dest / name).unlink()
    return dest


def save_other_model(model: torch.nn.Module, dest: Path, trainer_state: Path) -> Path:
    """A Trainer checkpoint of a model other than Wordybird's GPT-2 (no optimizer state)."""
    model.save_pretrained(dest)
    shutil.copy(trainer_state, dest)
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder: a recording, a finished run, and files of every wrong kind."""
    w = tmp_path_factory.mktemp("world")
    rec = make_recording(w / "rec.zarr")  # steps 100..111
    (w / "notes.txt").write_text("notes on the run: lr 1e-3, loss went down\n")
    (w / "notes.safetensors.index.json").write_text("not an index\n")
    (w / "ten.txt").write_bytes(b"0123456789")
    (w / "corpus.txt").write_text(CORPUS)
    (w / "empty").mkdir()
    zarr.open_group(str(w / "plain.zarr"), mode="w")
    save_file({"w": torch.zeros(3)}, str(w / "weights.safetensors"))
    write_masks(w / "masks.safetensors", vocab=VOCAB)
    with StreamingRecorder(w / "by-name.zarr") as by_name:  # one parameter, recorded by name
        for step in range(3):
            by_name.record(step, {"w/value": torch.full((4, 4), step / 8).bfloat16()})

    cut = export_safetensors(rec, w / "cut.safetensors")
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size - 1)
    shutil.copytree(rec, w / "newer.zarr")
    header = json.loads((w / "newer.zarr" / "zarr.json").read_text())
    header["attributes"]["wordybird"]["format_version"] = 3
    (w / "newer.zarr" / "zarr.json").write_text(json.dumps(header))
    (w / "split").mkdir()
    export_safetensors(rec, w / "split" / "x.safetensors", steps_per_file=4)
    export_safetensors(  # another range under the second file's name
        rec, w / "split" / "x-00002-of-00003.safetensors", steps="100:104", overwrite=True
    )

    train(config(w / "corpus.txt", steps=2), w / "wb1")
    checkpoint = w / "wb1" / "checkpoint-2"
    copy_checkpoint(checkpoint, w / "no-config", drop=("config.json",))
    tiny = {"n_embd": 8, "n_layer": 1, "n_head": 1, "n_positions": 16}
    save_other_model(
        GPT2LMHeadModel(GPT2Config(vocab_size=1000, bos_token_id=0, eos_token_id=0, **tiny)),
        w / "vocab-1000",
        checkpoint / "trainer_state.json",
    )
    llama = LlamaConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    save_other_model(LlamaForCausalLM(llama), w / "llama", checkpoint / "trainer_state.json")
    GPT2LMHeadModel.from_pretrained(checkpoint).save_pretrained(w / "weights-only")
    copy_checkpoint(checkpoint, w / "torn-run" / "checkpoint-2")
    two = copy_checkpoint(checkpoint, w / "two-processes" / "checkpoint-2", drop=("rng_state.pth",))
    for rank in (0, 1):  # as two processes save their random states
        shutil.copy(checkpoint / "rng_state.pth", two / f"rng_state_{rank}.pth")
    (w / "torn-run" / "run.json").write_text('{"config": {"steps"')  # killed mid-write
    return w


def assert_one_error_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 1 and a single ``error:`` line on stderr that contains ``message``."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]


REC, OUT = "{w}/rec.zarr", "{w}/x.safetensors"
TEXT_FILE = "notes.txt is not a readable safetensors file: its header length field"
CORPUS_ARG = ("--corpus", "{w}/corpus.txt")
CONTINUE = ("--corpus", "{w}/corpus.txt", "--out", "{w}/wb3")

#: id -> (command line, what its error line says); "{w}" is the world folder.
CLI_REFUSALS: dict[str, tuple[tuple[str, ...], str]] = {
    "recording-missing": (("export", "{w}/nowhere.zarr", OUT), "nowhere.zarr does not exist"),
    "text-file-inspect": (("inspect", "{w}/notes.txt"), TEXT_FILE),
    "text-file-export": (("export", "{w}/notes.txt", OUT), TEXT_FILE),
    "text-file-analyze": (("analyze", "{w}/notes.txt"), TEXT_FILE),
    "folder-not-a-recording": (
        ("inspect", "{w}/empty"),
        "empty is not a wordybird recording (no zarr.json), nor a run folder holding one "
        "(recording.zarr)",
    ),
    "zarr-group-not-a-recording": (
        ("inspect", "{w}/plain.zarr"),
        "plain.zarr is a Zarr group but not a wordybird recording",
    ),
    "safetensors-not-a-recording": (
        ("inspect", "{w}/weights.safetensors"),
        "weights.safetensors is a safetensors file but not a recording (no 'recorded_steps')",
    ),
    "truncated-export": (("inspect", "{w}/cut.safetensors"), "(truncated)"),
    "newer-format": (
        ("export", "{w}/newer.zarr", OUT),
        "uses recording format version 3; this wordybird reads versions 1 and 2",
    ),
    "split-files-not-together": (
        ("inspect", "{w}/split/x.safetensors"),
        "the files do not belong together",
    ),
    "split-index-not-json": (
        ("inspect", "{w}/notes.safetensors.index.json"),
        "is not a wordybird split-export index: it is not JSON",
    ),
    "export-under-a-file": (
        ("export", REC, "{w}/notes.txt/x.safetensors"),
        "notes.txt is a file, not a folder",
    ),
    "export-to-a-folder": (("export", REC, "{w}/empty"), "empty: it is a folder"),
    "steps-one-number": (("export", REC, OUT, "--steps", "105"), "--steps takes START:STOP"),
    "steps-backwards": (
        ("export", REC, OUT, "--steps", "108:104"),
        "step range 108:104 holds no recorded step (recorded steps are 100..111)",
    ),
    "max-file-size-unit": (
        ("export", REC, OUT, "--max-file-size", "4 parsecs"),
        "not a size: '4 parsecs'",
    ),
    "max-file-size-overflow": (
        ("export", REC, OUT, "--max-file-size", "1e400"),
        "'1e400' is too large for a file size",
    ),
    "max-file-size-zero": (
        ("export", REC, OUT, "--max-file-size", "0"),
        "a file size must be positive, got '0'",
    ),
    "both-split-options": (
        ("export", REC, OUT, "--steps-per-file", "2", "--max-file-size", "1MB"),
        "give either steps_per_file or max_file_size, not both",
    ),
    "masks-not-safetensors": (
        ("analyze", REC, "--masks", "{w}/notes.txt"),
        "cannot read token masks",
    ),
    "threshold-out-of-range": (
        ("analyze", REC, "--masks", "{w}/masks.safetensors", "--threshold", "5"),
        "the threshold is a hop fraction in (0, 1], got 5.0",
    ),
    "record-every-0": (
        ("train", "--record-every", "0", "--out", "{w}/run"),
        "record_every must be positive, got 0",
    ),
    "ten-byte-corpus-overwrite": (
        ("train", "--corpus", "{w}/ten.txt", "--out", "{w}/wb1", "--overwrite"),
        "the corpus has 5 tokens, fewer than one training window of 129",
    ),
    "run-folder-is-a-file": (
        ("train", *CORPUS_ARG, "--out", "{w}/notes.txt"),
        "notes.txt exists and is not a folder",
    ),
    "run-folder-under-a-file": (
        ("train", *CORPUS_ARG, "--out", "{w}/notes.txt/run"),
        "Not a directory",
    ),
    "resume-not-a-run": (
        ("train", "--resume", "--out", "{w}/empty"),
        "holds no run (run.json is missing)",
    ),
    "resume-and-overwrite": (
        ("train", "--resume", "--overwrite", "--out", "{w}/wb1"),
        "--resume and --overwrite exclude each other",
    ),
    "continue-a-file": (
        ("continue", "{w}/notes.txt", *CONTINUE),
        "notes.txt does not exist or is not a folder",
    ),
    "continue-a-run-folder": (
        ("continue", "{w}/wb1", *CONTINUE),
        "wb1 is not a Trainer checkpoint (trainer_state.json missing)",
    ),
    "continue-no-config": (
        ("continue", "{w}/no-config", *CONTINUE),
        "no-config holds no model (config.json is missing)",
    ),
    "continue-another-architecture": (
        ("continue", "{w}/llama", "--fresh-optimizer", *CONTINUE),
        "llama does not hold a GPT-2 model's weights",
    ),
    "continue-smaller-vocabulary": (
        ("continue", "{w}/vocab-1000", "--fresh-optimizer", *CONTINUE),
        "outside the model's vocabulary of 1000",
    ),
    "continue-a-two-process-checkpoint": (
        ("continue", "{w}/two-processes/checkpoint-2", *CONTINUE),
        "two-processes/checkpoint-2 was written by 2 processes and this run has 1 process: "
        "each process goes on from its own saved random state (dropout masks, ...), so run it "
        "as 2 processes",
    ),
    "continue-weights-only": (
        ("continue", "{w}/weights-only", *CONTINUE),
        "weights-only holds model weights only (no trainer_state.json or optimizer.pt); "
        "pass --fresh-optimizer",
    ),
    "continue-damaged-run-file": (
        ("continue", "{w}/torn-run/checkpoint-2", "--out", "{w}/wb3"),
        "torn-run/run.json: Expecting ':' delimiter",
    ),
    "resume-damaged-run-file": (
        ("train", "--resume", "--out", "{w}/torn-run"),
        "torn-run/run.json: Expecting ':' delimiter",
    ),
    "continue-overwriting-its-run": (
        ("continue", "{w}/wb1/checkpoint-2", *CORPUS_ARG, "--out", "{w}/wb1", "--overwrite"),
        "--overwrite would delete the run in",
    ),
    "local-dir-with-a-local-out": (
        ("train", *CORPUS_ARG, "--out", "{w}/run", "--local-dir", "{w}/elsewhere"),
        "--local-dir is for an s3:// --out; the local --out {w}/run is the run folder itself",
    ),
    "storage-option-with-a-local-out": (
        ("train", *CORPUS_ARG, "--out", "{w}/run", "--storage-option", "region=eu-west-1"),
        "storage options (region) apply to s3:// URLs, not to {w}/run",
    ),
    "out-not-s3": (
        ("train", *CORPUS_ARG, "--out", "gs://bucket/run"),
        "gs://bucket/run: only local paths and s3://bucket/prefix URLs are supported",
    ),
    "out-url-unnameable": (
        ("train", *CORPUS_ARG, "--out", "s3://bucket/runs/../wb1"),
        "cannot name a local run folder after s3://bucket/runs/../wb1: give --local-dir",
    ),
    "resume-url-without-its-run": (
        ("train", "--resume", "--out", "s3://bucket/wb1", "--local-dir", "{w}/empty"),
        "cannot resume s3://bucket/wb1: its run folder {w}/empty holds no run (run.json is "
        "missing); give the folder holding its checkpoints as --local-dir",
    ),
    "resume-url-of-another-run": (
        ("train", "--resume", "--out", "s3://bucket/wb1", "--local-dir", "{w}/wb1"),
        "cannot resume s3://bucket/wb1: the run in {w}/wb1 records to its own folder "
        "({w}/wb1/recording.zarr)",
    ),
    "continue-from-a-url": (
        ("continue", "s3://bucket/wb1/checkpoint-2", *CONTINUE),
        "cannot continue from s3://bucket/wb1/checkpoint-2: a checkpoint must be a local "
        "folder (the Trainer reads it from disk)",
    ),
    "analyze-parameter-matching-nothing": (
        ("analyze", "{w}/by-name.zarr", "--parameter", "v*", "--out", "{w}/out"),
        "{w}/by-name.zarr has no recorded parameter matching 'v*'; it records w",
    ),
    "analyze-parameter-of-the-notebook-layout": (
        ("analyze", REC, "--parameter", "wte", "--masks", "{w}/masks.safetensors"),
        "{w}/rec.zarr is in the notebook's layout (an 'embeddings' field, analysed by token "
        "masks); --parameter chooses parameters of a recording by name",
    ),
    "analyze-masks-of-a-recording-by-name": (
        ("analyze", "{w}/by-name.zarr", "--masks", "{w}/masks.safetensors", "--out", "{w}/out"),
        "--masks applies to the notebook's layout (an 'embeddings' field); {w}/by-name.zarr "
        "records parameters by name",
    ),
    "analyze-threshold-by-name": (
        ("analyze", "{w}/by-name.zarr", "--threshold", "0", "--out", "{w}/out"),
        "the threshold is a hop fraction in (0, 1], got 0.0",
    ),
    "masks-out-a-folder": (
        ("masks", *CORPUS_ARG, "--out", "{w}/empty"),
        "Is a directory",
    ),
    "masks-out-under-a-file": (
        ("masks", *CORPUS_ARG, "--out", "{w}/notes.txt/m.safetensors"),
        "notes.txt is a file, not a folder",
    ),
}


def world_args(args: tuple[str, ...], world: Path) -> list[str]:
    """A command line of the tables with "{w}" replaced by the world folder."""
    return [arg.replace("{w}", str(world)) for arg in args]


@pytest.mark.parametrize("case", CLI_REFUSALS)
def test_cli_refusal(world: Path, case: str) -> None:
    """The command exits 1 with one ``error:`` line and changes no file of the world."""
    args, message = CLI_REFUSALS[case]
    before = snapshot(world)
    assert_one_error_line(run_cli(*world_args(args, world)), message.replace("{w}", str(world)))
    assert snapshot(world) == before


#: id -> (command line, click's message): usage errors exit 2 with click's own lines.
USAGE_ERRORS: dict[str, tuple[tuple[str, ...], str]] = {
    "steps-per-file-0": (
        ("export", REC, OUT, "--steps-per-file", "0"),
        "Invalid value for '--steps-per-file': 0 is not in the range x>=1.",
    ),
    "steps-not-a-number": (
        ("train", "--steps", "ten", "--out", "{w}/run"),
        "Invalid value for '--steps': 'ten' is not a valid integer.",
    ),
    "out-missing": (("export", REC), "Missing argument 'OUT'."),
    "analysis-out-a-file": (
        ("analyze", REC, "--out", "{w}/notes.txt"),
        "Invalid value for '--out': Directory '{w}/notes.txt' is a file.",
    ),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_cli_usage_error(world: Path, case: str) -> None:
    """click refuses the command line before the command runs: exit 2, its own message."""
    args, message = USAGE_ERRORS[case]
    before = snapshot(world)
    result = run_cli(*world_args(args, world))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: " + message.replace("{w}", str(world))
    assert snapshot(world) == before


def test_continue_refuses_adam_state_of_other_shapes(world: Path, tmp_path: Path) -> None:
    """torch's load_state_dict takes Adam state of another model's shapes, and the first
    step then failed mid-run: refused before any step, the checkpoint untouched."""
    checkpoint = copy_checkpoint(world / "wb1" / "checkpoint-2", tmp_path / "mixed")
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    for state in optimizer["state"].values():
        state["exp_avg"] = torch.cat([state["exp_avg"], state["exp_avg"][:1]])  # one row more
    torch.save(optimizer, checkpoint / "optimizer.pt")
    before = snapshot(checkpoint)
    out = tmp_path / "wb3"
    result = run_cli(
        "continue", str(checkpoint), "--corpus", str(world / "corpus.txt"), "--out", str(out)
    )
    assert_one_error_line(
        result, f"the optimizer state in {checkpoint} does not fit its model: its exp_avg"
    )
    assert snapshot(checkpoint) == before
    assert not (out / "recording.zarr").exists()


def read_only_runner(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` is read-only, or skip the test.

    chmod does not stop root, so a read-only bind mount in a private mount namespace
    (``unshare``) is tried first; without one, chmod serves other users.
    """
    prefix = [
        "unshare", "--map-root-user", "--mount", "sh", "-c",
        'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder),
    ]  # fmt: skip
    if shutil.which("unshare"):
        probe = subprocess.run(
            [*prefix, "sh", "-c", f"! touch {folder}/probe"], capture_output=True, check=False
        )
        (folder / "probe").unlink(missing_ok=True)  # the mount did not hold
        if probe.returncode == 0:
            return prefix
    if os.geteuid() == 0:
        pytest.skip(
            "running as root without a mount namespace for a read-only bind (unshare "
            "failed), and chmod does not stop root; the rows with a file where a folder "
            "is expected test the same refusals"
        )
    folder.chmod(0o555)
    return []


READ_ONLY: dict[str, tuple[tuple[str, ...], str]] = {
    "export": (("export", REC, "{ro}/x.safetensors"), "cannot write in {ro}"),
    "masks": (("masks", *CORPUS_ARG, "--out", "{ro}/m.safetensors"), "{ro}/m.safetensors"),
    "train": (("train", *CORPUS_ARG, "--out", "{ro}/run"), "{ro}/run"),
}


@pytest.mark.parametrize("case", READ_ONLY)
def test_read_only_folder(world: Path, tmp_path: Path, case: str) -> None:
    """Writing into a read-only folder is one ``error:`` line naming it, not a traceback."""
    read_only = tmp_path / "ro"
    read_only.mkdir()
    prefix = read_only_runner(read_only)
    args, message = READ_ONLY[case]
    command = [arg.replace("{ro}", str(read_only)) for arg in world_args(args, world)]
    before = snapshot(world)
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "wordybird.cli", *command],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        read_only.chmod(0o755)
    assert_one_error_line(result, message.replace("{ro}", str(read_only)))
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert snapshot(world) == before
    assert not any(read_only.iterdir())


# -- the Python API ------------------------------------------------------------------------------

#: id -> (a bad call on a recorder holding steps 0 and 1, what the error says)
BAD_RECORDS: dict[str, tuple[Callable[[StreamingRecorder], None], str]] = {
    "a-tensor-not-a-mapping": (
        lambda rec: rec.record(2, make_step(2)["embeddings"]),  # type: ignore[arg-type]
        "record() takes a mapping of field names to values",
    ),
    "float8-values": (
        lambda rec: rec.record(
            2, make_step(2) | {"logits": torch.zeros(300, dtype=torch.float8_e4m3fn)}
        ),
        "field 'logits': cannot record torch.float8_e4m3fn values",
    ),
    "complex128-values": (  # it would record, then fail every export
        lambda rec: rec.record(
            2, make_step(2) | {"logits": torch.zeros(3, dtype=torch.complex128)}
        ),
        "field 'logits': cannot record torch.complex128 values: a safetensors export could "
        "not hold them",
    ),
    "text-value": (
        lambda rec: rec.record(2, make_step(2) | {"logits": "0.5"}),  # type: ignore[dict-item]
        "field 'logits': cannot record a str",
    ),
    "step-beyond-int64": (
        lambda rec: rec.record(2**63, make_step(2)),
        "step 9223372036854775808 is outside the int64 range",
    ),
    "fractional-step": (
        lambda rec: rec.record(2.5, make_step(2)),  # type: ignore[arg-type]
        "step must be an integer, got 2.5",
    ),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_refused_record(tmp_path: Path, case: str) -> None:
    """A refused record() leaves the committed steps bit-exact and the recorder usable."""
    call, message = BAD_RECORDS[case]
    path = tmp_path / "r.zarr"
    with StreamingRecorder(path) as rec:
        rec.record(0, make_step(0))
        rec.record(1, make_step(1))
        with pytest.raises(WordybirdError, match=re.escape(message)):
            call(rec)
        rec.record(2, make_step(2))
    with wordybird.open(path) as recording:
        assert recording.steps.tolist() == [0, 1, 2]
        for position, tensors in enumerate(map(make_step, range(3))):
            for name, value in tensors.items():
                assert same_bits(recording[name][position], value), (name, position)


#: id -> (a bad way to start a recording or an export, what the error says)
BAD_CALLS: dict[str, tuple[Callable[[Path], object], str]] = {
    "recorder-under-a-file": (
        lambda w: StreamingRecorder(w / "notes.txt" / "r.zarr"),
        "notes.txt is a file, not a folder",
    ),
    "unknown-mode": (
        lambda w: StreamingRecorder(w / "r.zarr", mode="fast"),  # type: ignore[arg-type]
        "unknown recording mode 'fast'",
    ),
    "queue-size-0": (
        lambda w: StreamingRecorder(w / "r.zarr", queue_size=0),
        "queue_size must be at least 1, got 0",
    ),
    "steps-per-file-0": (
        lambda w: export_safetensors(w / "rec.zarr", w / "x.safetensors", steps_per_file=0),
        "steps per file must be at least 1, got 0",
    ),
    "monitor-patience-0": (
        lambda w: FreezeMonitor(patience=0),
        "patience must be at least 1 recorded step, got 0",
    ),
    "monitor-threshold-above-1": (
        lambda w: FreezeMonitor(threshold=2.0),
        "the threshold is a hop fraction in (0, 1], got 2.0",
    ),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_refused_call(tmp_path: Path, case: str) -> None:
    """Refused before anything is written: the folder is as it was."""
    call, message = BAD_CALLS[case]
    make_recording(tmp_path / "rec.zarr")
    (tmp_path / "notes.txt").write_text("notes\n")
    before = snapshot(tmp_path)
    with pytest.raises(WordybirdError, match=re.escape(message)):
        call(tmp_path)
    assert snapshot(tmp_path) == before


def _embedding_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _watch(tmp: Path, **options: object) -> object:
    model, optimizer = _embedding_model()
    with StreamingRecorder(tmp / "w.zarr") as recorder:
        return wordybird.watch(model, optimizer, recorder, **options)


#: id -> (options of watch() that name what to record wrongly, what the error says)
BAD_CHOICES: dict[str, tuple[dict[str, object], str]] = {
    "unknown-name": (
        {"parameters": ["0.weigth"]},
        "the model has no parameter matching '0.weigth'; close: 0.weight",
    ),
    "pattern-matching-nothing": ({"parameters": ["*.bias_"]}, "no parameter matching '*.bias_'"),
    "not-a-name": ({"parameters": [3]}, "expected names, glob patterns or a predicate, got 3"),
    "row-out-of-range": (
        {"parameters": ["0.weight"], "rows": [0, 10]},
        "0.weight has rows 0..9; got indices 0..10",
    ),
    "negative-row": ({"parameters": ["0.weight"], "rows": [-1]}, "got indices -1..-1"),
    "mask-of-wrong-length": (
        {"parameters": ["0.weight"], "rows": [True, False]},
        "a mask for 0.weight needs shape (10,), got (2,)",
    ),
    "float-rows": (
        {"parameters": ["0.weight"], "rows": [0.5]},
        "give integer indices or a boolean mask",
    ),
    "no-rows-chosen": ({"parameters": ["0.weight"], "rows": []}, "no rows of 0.weight chosen"),
    "all-false-mask": (
        {"parameters": ["0.weight"], "rows": [False] * 10},
        "no rows of 0.weight chosen",
    ),
    "rows-of-a-scalar-free-unknown-name": (
        {"parameters": ["0.weight"], "rows": {"1.weight": [0]}},
        "rows= names 1.weight, which are not recorded parameters (0.weight)",
    ),
    "record-every-0": ({"parameters": ["0.weight"], "record_every": 0}, "record_every must be"),
}


@pytest.mark.parametrize("case", BAD_CHOICES)
def test_refused_choice_of_what_to_record(tmp_path: Path, case: str) -> None:
    options, message = BAD_CHOICES[case]
    with pytest.raises(WordybirdError, match=re.escape(message)):
        _watch(tmp_path, **options)


def test_watch_refuses_what_is_not_an_optimizer(tmp_path: Path) -> None:
    model, _ = _embedding_model()
    with (
        StreamingRecorder(tmp_path / "w.zarr") as recorder,
        pytest.raises(WordybirdError, match="watch\\(\\) needs a torch.optim.Optimizer, got dict"),
    ):
        wordybird.watch(model, {}, recorder, parameters=["0.weight"])  # type: ignore[arg-type]


def test_the_notebook_layout_refuses_rows_and_store_dtype(tmp_path: Path) -> None:
    with (
        StreamingRecorder(tmp_path / "w.zarr") as recorder,
        pytest.raises(WordybirdError, match="rows= and store_dtype= need parameters="),
    ):
        wordybird.RecorderCallback(recorder, rows=[0, 1])


@pytest.mark.parametrize(
    ("main", "has_recorder", "message"),
    [
        (True, False, "RecorderCallback(None) on the main process: nothing records"),
        (False, True, "process 1 of 2 was given a recorder: create it on the main process only"),
    ],
)
def test_a_multi_process_recorder_only_on_the_main_process(
    tmp_path: Path, main: bool, has_recorder: bool, message: str
) -> None:
    from transformers import TrainerControl, TrainerState

    recorder = StreamingRecorder(tmp_path / "r.zarr") if has_recorder else None
    callback = wordybird.RecorderCallback(recorder)
    state = TrainerState(is_world_process_zero=main)
    args = SimpleNamespace(process_index=0 if main else 1, world_size=2)  # as under torchrun
    with pytest.raises(WordybirdError, match=re.escape(message)):
        callback.on_train_begin(
            args, state, TrainerControl(), model=torch.nn.Linear(2, 2), optimizer=None
        )
    if recorder is not None:
        recorder.close()
