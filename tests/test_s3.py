"""Recordings in S3-compatible object storage, against a real S3 server on 127.0.0.1 (moto
in server mode, started here): the same commit protocol, kills, readers, CLI as on disk;
and `wordybird train --out s3://…` with `analyze` finding the run's masks in the bucket."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import torch

import test_recorder_faults as faults
import wordybird
from test_analysis import V, wb1_and_wb3
from test_distributed import WORDYBIRD, launch
from test_freeze import train as train_tiny
from test_recorder import same_bits
from test_training_cli import TINY, wordybird_cli, write_corpus
from wordybird import StreamingRecorder, WordybirdError, storage
from wordybird.analysis.hops import analyze
from wordybird.analysis.masks import MASKS_FILENAME, load_masks

moto_server = pytest.importorskip("moto.server")

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A local S3 server for this module; its URL, with test credentials in the env."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, reached through AWS_ENDPOINT_URL as a user would configure it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    name = f"wb-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def keys(endpoint: str, bucket: str, prefix: str = "") -> set[str]:
    """Every object key under ``prefix``, listed by another client (boto3)."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.mark.parametrize("mode", ["default", "compact"])
def test_round_trip_resume_and_truncate_on_s3(bucket: str, endpoint: str, mode: str) -> None:
    url = f"s3://{bucket}/runs/r.zarr"
    with StreamingRecorder(url, mode=mode) as rec:
        for step in range(20):
            rec.record(step, faults.fault_step(step))
    with StreamingRecorder(url, resume=True) as rec:
        assert rec.last_step == 19
        rec.truncate(after_step=9)
        for step in range(10, 12):
            rec.record(step, faults.fault_step(step))
    faults.check_recording(url, 12)  # bit-exact, steps 0..11
    stored = keys(endpoint, bucket, "runs/r.zarr/")
    # nothing past the truncation is left in the bucket: step 12..19's chunks are gone
    assert not any(k.startswith("runs/r.zarr/p/b/c/12/") for k in stored)
    assert "runs/r.zarr/p/zarr.json" in stored  # a parameter's group, nested
    with wordybird.open(url) as rec:
        assert rec.mode == mode
        assert rec.size_on_disk() == sum(
            item["Size"]
            for item in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(
                Bucket=bucket, Prefix="runs/r.zarr/"
            )["Contents"]
        )


def test_storage_options_override_the_environment(
    bucket: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    url = f"s3://{bucket}/r.zarr"
    with StreamingRecorder(url, storage_options={"endpoint": endpoint}) as rec:
        rec.record(0, faults.fault_step(0))
    with wordybird.open(url, storage_options={"endpoint": endpoint}) as rec:
        assert same_bits(rec["a"][0], faults.fault_step(0)["a"])
    with pytest.raises(WordybirdError, match=r"^cannot reach s3://.*/r.zarr: .*\S$"):
        wordybird.open(url, storage_options={"endpoint": "http://127.0.0.1:9", "timeout": "1s"})


def test_a_missing_recording_and_a_foreign_prefix(bucket: str, endpoint: str) -> None:
    with pytest.raises(WordybirdError, match="r.zarr does not exist"):
        wordybird.open(f"s3://{bucket}/r.zarr")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.put_object(Bucket=bucket, Key="data/notes.txt", Body=b"not a recording")
    with pytest.raises(WordybirdError, match="is not a wordybird recording"):
        wordybird.open(f"s3://{bucket}/data")
    with pytest.raises(WordybirdError, match="refusing to overwrite"):
        StreamingRecorder(f"s3://{bucket}/data", overwrite=True)
    assert keys(endpoint, bucket, "data/") == {"data/notes.txt"}  # untouched
    with pytest.raises(WordybirdError, match="only local paths and s3://bucket/prefix URLs"):
        wordybird.open("gs://bucket/r.zarr")


def _kill_on_s3(environment: dict[str, str], url: str, mode: str, point: str, times: int) -> None:
    """In a child process (the forkserver's environment predates the S3 server): record on
    S3 and die at the ``times``-th ``point``."""
    os.environ.update(environment)
    faults.stage(url, mode, "record", point, times)


#: (point, occurrence) where the writer dies on S3, and the steps committed by then
S3_KILLS = {
    "first-chunk": ("write:p/b/c/0/0/0", 1, 0),
    "before-first-header": ("commit", 1, 0),
    "between-chunks": ("write:p/b/c/17/0/0", 1, 17),
    "before-header": ("commit", 17, 16),
    "during-header": ("write:zarr.json", 18, 16),
    "after-header": ("committed", 18, 18),
}


@pytest.mark.parametrize("mode", ["default", "compact"])
@pytest.mark.parametrize("case", S3_KILLS)
def test_kill_mid_step_on_s3_loses_no_committed_step(
    bucket: str, endpoint: str, mode: str, case: str
) -> None:
    """S3 has no rename: a step counts only once the header object written after all of its
    chunk objects says so. A process killed (os._exit, no clean-up) anywhere in a step
    leaves every committed step intact, and resume continues after them."""
    point, occurrence, committed = S3_KILLS[case]
    url = f"s3://{bucket}/r.zarr"
    environment = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    child = faults._forkserver.Process(
        target=_kill_on_s3, args=(environment, url, mode, point, occurrence)
    )
    child.start()
    child.join(120)
    assert child.exitcode == faults.KILLED, f"never reached {point} #{occurrence}"
    faults.check_recording(url, committed)
    with StreamingRecorder(url, resume=True) as rec:
        for step in range(committed, committed + faults.MORE):
            rec.record(step, faults.fault_step(step))
    faults.check_recording(url, committed + faults.MORE)
    top = {k.split("/")[1] for k in keys(endpoint, bucket, "r.zarr/")}
    assert top == {"a", "p", "loss", "recorded_steps", "zarr.json"}
    assert wordybird.open(url).uncommitted == 0


def test_reading_one_step_requests_only_its_chunks(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{bucket}/r.zarr"
    with StreamingRecorder(url) as rec:
        for step in range(6):
            rec.record(step, {"w": torch.randn(3000, 512).bfloat16(), "loss": torch.tensor(1.0)})
    requested: list[str] = []
    for method in ("get", "exists", "get_partial_values"):
        original = getattr(storage.S3Store, method)

        def counting(self, key, *args, _original=original, **kwargs):
            requested.extend([key] if isinstance(key, str) else [k for k, *_ in key])
            return _original(self, key, *args, **kwargs)

        monkeypatch.setattr(storage.S3Store, method, counting)
    with wordybird.open(url) as rec:
        requested.clear()  # opening reads the header and each array's metadata
        value = rec["w"][4]
    assert value.shape == (3000, 512)
    chunks = {k for k in requested if "/c/" in k}
    assert chunks == {"w/c/4/0/0", "w/c/4/1/0"}  # 3 MB bf16: two 2 MB-bounded chunks
    assert set(requested) == chunks, set(requested) - chunks  # nothing else fetched


def test_cli_inspect_check_and_export_from_s3(bucket: str, endpoint: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/r.zarr"
    with StreamingRecorder(url) as rec:
        for step in range(3):
            rec.record(step, faults.fault_step(step))
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # the option must win
    option = ["--storage-option", f"endpoint={endpoint}"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "wordybird.cli", *args, *option]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    inspected = cli("inspect", url)
    assert inspected.returncode == 0, inspected.stderr
    assert "3 recorded, 0..2" in inspected.stdout
    checked = cli("check", url)
    assert checked.returncode == 0, checked.stderr
    assert "ok, 3 committed step(s)" in checked.stdout
    out = tmp_path / "r.safetensors"
    exported = cli("export", url, str(out))
    assert exported.returncode == 0, exported.stderr
    with wordybird.open(out) as rec:
        for position in range(3):
            assert same_bits(rec["p/b"][position], faults.fault_step(position)["p/b"])
    missing = cli("inspect", f"s3://{bucket}/nothing.zarr")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: s3://{bucket}/nothing.zarr does not exist"


def test_tensorstore_reads_a_default_mode_store_on_s3(bucket: str, endpoint: str) -> None:
    """An independent Zarr v3 reader (TensorStore, its own S3 client) gets the same bf16."""
    ts = pytest.importorskip("tensorstore")
    url = f"s3://{bucket}/r.zarr"
    with StreamingRecorder(url) as rec:
        for step in range(3):
            rec.record(step, faults.fault_step(step))
    spec = {
        "driver": "zarr3",
        "kvstore": {
            "driver": "s3",
            "bucket": bucket,
            "path": "r.zarr/p/b/",
            "endpoint": endpoint,
            "aws_region": "us-east-1",
        },
    }
    data = ts.open(spec).result().read().result()
    assert str(data.dtype) == "bfloat16"
    for position in range(3):
        got = torch.from_numpy(data[position].view("int16")).view(torch.bfloat16)
        assert same_bits(got, faults.fault_step(position)["p/b"])


def test_a_dask_cluster_reads_an_s3_recording_with_its_storage_options(
    bucket: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """to_xarray's tasks reopen the recording in each worker process: the storage options
    travel with them (the workers' environment points nowhere)."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    url, options = f"s3://{bucket}/r.zarr", {"endpoint": endpoint}
    with StreamingRecorder(url, mode="compact", storage_options=options) as rec:
        for step in range(20):
            rec.record(step, faults.fault_step(step))
    with wordybird.open(url, storage_options=options) as rec:
        dataset = rec.to_xarray()
        expected = rec["p/b"].numpy(slice(None)).astype("float64").sum(axis=(1, 2))
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        values = dataset["p/b"].astype("float64")
        got = values.sum(dim=list(values.dims[1:])).compute()
    assert got["step"].values.tolist() == list(range(20))
    assert abs(got.values - expected).max() <= 1e-12 * abs(expected).max()


# -- wordybird train --out s3://… ------------------------------------------------------------

RUN = ["--steps", "3", "--batch-size", "2", "--checkpoint-every", "2", *TINY]
SMALL_FILES = ("run.json", "token_masks.safetensors", "summary.json")


def read_object(endpoint: str, bucket: str, key: str) -> bytes:
    return (
        boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    )


def upload_folder(endpoint: str, bucket: str, folder: Path, prefix: str) -> None:
    """Copy a local folder into the bucket, file by file (a recording, its masks)."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def assert_same_recordings(got: str | Path, want: str | Path, steps: list[int]) -> None:
    with wordybird.open(got) as a, wordybird.open(want) as b:
        assert a.steps.tolist() == b.steps.tolist() == steps
        assert a.fields == b.fields
        for name in b.fields:
            assert same_bits(a[name][0 : len(steps)], b[name][0 : len(steps)]), name


def test_train_and_continue_to_s3_equal_local_runs_and_write_no_secret(
    bucket: str,
    endpoint: str,
    tmp_path: Path,
) -> None:
    """`train --out s3://…`: the recording streams to <URL>/recording.zarr and equals a
    local run's bit for bit; the checkpoints go to the default local folder (said first);
    run.json, the masks and the summary are copied beside the recording. `continue` from
    its checkpoint to another URL. The storage options given (a secret key among them)
    are written nowhere, neither on disk nor in the bucket."""
    corpus = write_corpus(tmp_path / "toy.txt")
    url = f"s3://{bucket}/runs/wb1"
    secret = "wb-secret-4f1c9e"
    options = [
        *("--storage-option", f"endpoint={endpoint}"),
        *("--storage-option", "access_key_id=testing"),
        *("--storage-option", f"secret_access_key={secret}"),
    ]
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # the options must win
    work = tmp_path / "work"
    work.mkdir()
    done = wordybird_cli(
        "train", "--corpus", corpus, *RUN, "--out", url, *options, cwd=work, env=env
    )
    assert done.returncode == 0, done.stderr
    local = work / "s3" / bucket / "runs" / "wb1"
    assert done.stdout.splitlines()[0] == (
        f"local run folder: s3/{bucket}/runs/wb1 (checkpoints, run.json, token masks, "
        "summary; --local-dir to choose)"
    )
    assert f"Recording: {url}/recording.zarr (4 steps" in done.stdout
    assert sorted(p.name for p in local.iterdir()) == sorted(
        ["checkpoint-2", "checkpoint-3", *SMALL_FILES]
    )
    stored = keys(endpoint, bucket)
    assert "runs/wb1/recording.zarr/zarr.json" in stored
    beside = {k for k in stored if not k.startswith("runs/wb1/recording.zarr/")}
    assert beside == {f"runs/wb1/{name}" for name in SMALL_FILES}
    for name in SMALL_FILES:
        assert read_object(endpoint, bucket, f"runs/wb1/{name}") == (local / name).read_bytes()
    plan = json.loads((local / "run.json").read_text())
    assert plan["remote"] == url
    summary = json.loads((local / "summary.json").read_text())
    assert summary["recording"] == f"{url}/recording.zarr"
    assert summary["checkpoint"] == str(Path("s3", bucket, "runs", "wb1", "checkpoint-3"))

    reference = tmp_path / "reference"
    done = wordybird_cli("train", "--corpus", corpus, *RUN, "--out", reference)
    assert done.returncode == 0, done.stderr
    assert_same_recordings(f"{url}/recording.zarr", reference / "recording.zarr", [0, 1, 2, 3])

    # continue from the S3 run's checkpoint (its settings from the run.json beside it) to
    # another URL: step 3 again, on the same batch, bit for bit
    wb3 = f"s3://{bucket}/runs/wb3"
    done = wordybird_cli(
        "continue", local / "checkpoint-2", "--steps", "1", "--schedule", "continue",
        "--out", wb3, "--local-dir", tmp_path / "wb3", *options, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"local run folder: {tmp_path / 'wb3'} (" in done.stdout
    with (
        wordybird.open(f"{wb3}/recording.zarr") as got,
        wordybird.open(reference / "recording.zarr") as want,
    ):
        assert got.steps.tolist() == [2, 3]
        for name in want.fields:
            assert same_bits(got[name][1], want[name][3]), name
    assert f"runs/wb3/{MASKS_FILENAME}" in keys(endpoint, bucket, "runs/wb3/")

    for path in tmp_path.rglob("*"):  # the secret key: in no file, in no object
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    for key in keys(endpoint, bucket):
        assert secret.encode() not in read_object(endpoint, bucket, key), key


def test_resume_on_s3_cuts_the_recording_back_to_the_checkpoint(
    bucket: str,
    endpoint: str,
    tmp_path: Path,
) -> None:
    """A run whose last checkpoint is lost (killed before writing it) resumes from the one
    before, by its URL or by its local folder: the recording in the bucket is cut back to
    that checkpoint and goes on, bit for bit as the uninterrupted run."""
    corpus = write_corpus(tmp_path / "toy.txt")
    url, local = f"s3://{bucket}/wb1", tmp_path / "work"
    run = ["--steps", "4", "--batch-size", "2", "--checkpoint-every", "2", *TINY]
    done = wordybird_cli("train", "--corpus", corpus, *run, "--out", url, "--local-dir", local)
    assert done.returncode == 0, done.stderr
    reference = tmp_path / "reference.zarr"  # the uninterrupted recording, kept aside
    for key in keys(endpoint, bucket, "wb1/recording.zarr/"):
        target = reference / key.removeprefix("wb1/recording.zarr/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_object(endpoint, bucket, key))

    for how in (["--out", url, "--local-dir", local], ["--out", local]):
        shutil.rmtree(local / "checkpoint-4")  # the recording in the bucket still has step 4
        done = wordybird_cli("train", "--resume", *how)
        assert done.returncode == 0, (how, done.stderr)
        assert "Training complete: steps 3-4" in done.stdout, done.stdout
        assert_same_recordings(f"{url}/recording.zarr", reference, [0, 1, 2, 3, 4])
        assert (local / "checkpoint-4").is_dir()

    other = wordybird_cli(
        "train", "--resume", "--out", f"s3://{bucket}/other", "--local-dir", local
    )
    assert other.returncode == 1
    assert other.stderr.strip() == (
        f"error: cannot resume s3://{bucket}/other: the run in {local} records to {url}"
    )


def test_train_to_s3_refuses_to_clobber_and_says_when_the_bucket_is_unreachable(
    bucket: str, endpoint: str, tmp_path: Path
) -> None:
    """Refused before anything is written, locally or in the bucket: an --out URL holding a
    run (without --overwrite), something other than a recording where the recording would
    go (even with --overwrite), a bucket that cannot be reached."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.put_object(Bucket=bucket, Key="wb1/run.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="wb2/recording.zarr/notes.txt", Body=b"not a recording")
    before = {key: read_object(endpoint, bucket, key) for key in keys(endpoint, bucket)}
    corpus = write_corpus(tmp_path / "toy.txt")
    cases = {
        ("--out", f"s3://{bucket}/wb1"): f"error: s3://{bucket}/wb1 already holds a run; pass "
        "--overwrite to replace it or --resume to continue it",
        ("--out", f"s3://{bucket}/wb2", "--overwrite"): f"error: refusing to overwrite "
        f"s3://{bucket}/wb2/recording.zarr: it is not a wordybird recording (delete it "
        "yourself if it should go)",
        ("--out", f"s3://{bucket}/wb3", "--storage-option", "endpoint=http://127.0.0.1:9"): (
            f"error: cannot reach s3://{bucket}/wb3/run.json: "
        ),
    }
    for args, message in cases.items():
        done = wordybird_cli("train", "--corpus", corpus, *TINY, *args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    assert {key: read_object(endpoint, bucket, key) for key in keys(endpoint, bucket)} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["toy.txt"]  # no run folder


def test_analyze_finds_the_masks_beside_an_s3_recording(
    bucket: str, endpoint: str, tmp_path: Path
) -> None:
    """As beside a local recording: token_masks.safetensors next to the recording in the
    bucket (where train puts it), and for a --compare recording without masks beside it,
    the main one's. Without masks anywhere, the one refusal names where it looked."""
    wb1, wb3 = wb1_and_wb3(tmp_path)
    (wb3.parent / MASKS_FILENAME).unlink()
    upload_folder(endpoint, bucket, wb1.parent, "runs/wb1")
    upload_folder(endpoint, bucket, wb3.parent, "runs/wb3")
    url, url3 = f"s3://{bucket}/runs/wb1/recording.zarr", f"s3://{bucket}/runs/wb3/recording.zarr"
    out = tmp_path / "analysis"
    done = wordybird_cli("analyze", url, "--compare", url3, "--out", out)
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "analysis.json").read_text())
    masks_url = f"s3://{bucket}/runs/wb1/{MASKS_FILENAME}"
    with wordybird.open(wb1) as rec:
        expected = analyze(rec, load_masks(wb1.parent / MASKS_FILENAME, V))
    assert written["summary"]["masks"] == masks_url
    assert written["summary"]["freeze_step"] == expected.summary["freeze_step"]
    assert [c["summary"]["masks"] for c in written["compare"]] == [masks_url]

    missing = wordybird_cli("analyze", url3, "--out", tmp_path / "a3")
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        f"error: token masks s3://{bucket}/runs/wb3/{MASKS_FILENAME} not found; pass --masks"
    ), missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    given = wordybird_cli("analyze", url3, "--masks", masks_url, "--out", tmp_path / "a3")
    assert given.returncode == 0, given.stderr


def test_analyze_of_an_s3_recording_by_name_equals_the_local_analysis(
    bucket: str, endpoint: str, tmp_path: Path
) -> None:
    """A pure-bf16 run recorded by name, analysed from the bucket: the same parameters,
    freeze steps and causes as the local copy's analysis."""
    local = tmp_path / "run" / "recording.zarr"
    local.parent.mkdir()
    with pytest.warns(wordybird.FreezeWarning):
        train_tiny({"compact": local}, torch.bfloat16, steps=30)
    upload_folder(endpoint, bucket, local.parent, "runs/tiny")
    outputs = {}
    for where in (local, f"s3://{bucket}/runs/tiny/recording.zarr"):
        out = tmp_path / ("s3" if isinstance(where, str) else "local")
        done = wordybird_cli("analyze", where, "--out", out)
        assert done.returncode == 0, done.stderr
        outputs[out.name] = json.loads((out / "analysis.json").read_text())
    assert outputs["s3"]["parameters"] == outputs["local"]["parameters"]
    assert outputs["s3"]["summary"]["frozen"] == outputs["local"]["summary"]["frozen"] != []


def test_train_to_s3_as_two_processes(bucket: str, endpoint: str, tmp_path: Path) -> None:
    """Under torchrun, the main process alone prepares the URL and the local run folder,
    records to the bucket and copies the run's files beside the recording."""
    corpus = write_corpus(tmp_path / "toy.txt")
    args = ["train", "--corpus", str(corpus), *RUN, "--batch-size", "4",
            "--out", f"s3://{bucket}/wb1"]  # fmt: skip
    done = launch([WORDYBIRD, *args], 2, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("Training complete: steps 1-3") == 1, done.stdout
    local = tmp_path / "s3" / bucket / "wb1"
    assert {p.name for p in local.iterdir()} == {*SMALL_FILES, "checkpoint-2", "checkpoint-3"}
    assert {p.name for p in (local / "checkpoint-3").glob("rng_state*")} == {
        "rng_state_0.pth", "rng_state_1.pth"
    }  # fmt: skip
    stored = keys(endpoint, bucket, "wb1/")
    assert {k for k in stored if not k.startswith("wb1/recording.zarr/")} == {
        f"wb1/{name}" for name in SMALL_FILES
    }
    for name in SMALL_FILES:
        assert read_object(endpoint, bucket, f"wb1/{name}") == (local / name).read_bytes()
    with wordybird.open(f"s3://{bucket}/wb1/recording.zarr") as rec:
        assert rec.steps.tolist() == [0, 1, 2, 3]
        assert rec.metadata["hyperparameters"]["processes"] == 2
