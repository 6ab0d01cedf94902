"""Recordings in S3-compatible object storage, against a real S3 server on 127.0.0.1 (moto
in server mode, started here): the same commit protocol, kills, readers, CLI as on disk."""

from __future__ import annotations

import logging
import os
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
from test_recorder import same_bits
from wordybird import StreamingRecorder, WordybirdError
from wordybird.recorder import storage

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
