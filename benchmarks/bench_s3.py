"""Recording to S3-compatible object storage vs the local disk, in one run.

The S3 server is moto in server mode on 127.0.0.1 (started here, in this process: it
shares the 2 cores with the recorder, and has no network latency, so a real endpoint is
slower per request and faster per core). A step is the notebook's: 4 × [50257, 64] bf16 +
[50257] bf16 logits + a loss = 25.7 MB of synthetic random-walk bf16
(_common.synthetic_walk). Reported:

- recording throughput (MB/s of raw step data, first record() to close()), S3 vs disk,
  alternating runs, medians;
- the zarr stores for S3 compared on one array of the notebook's shape: zarr's
  ObjectStore (obstore, what wordybird uses) vs FsspecStore (s3fs, when installed);
- the requests that reading one step of ``embeddings`` makes after a fresh open.

Run: ``python benchmarks/bench_s3.py [--steps 20] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from _common import VOCAB, Step, step_nbytes, synthetic_walk
from wordybird import StreamingRecorder, storage

DISTINCT_STEPS = 4
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def start_server() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def seconds_per_step(where: str | Path, inputs: Sequence[Step], n_steps: int) -> float:
    recorder = StreamingRecorder(where, overwrite=True)
    start = time.perf_counter()
    for i in range(n_steps):
        recorder.record(i, inputs[i % len(inputs)])
    recorder.close()
    return (time.perf_counter() - start) / n_steps


def store_speeds(make_store: Callable[[], zarr.abc.store.Store], steps: int) -> tuple[float, float]:
    """Seconds per append and per read of one [50257, 64] uint16 step through a store."""
    group = zarr.open_group(store=make_store(), mode="w", zarr_format=3)
    array = group.create_array(
        "e",
        shape=(0, VOCAB, 64),
        chunks=(1, 16384, 64),
        dtype="u2",
        compressors=(
            BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=2),
            Crc32cCodec(),
        ),
    )
    rng = np.random.default_rng(0)
    value = (rng.standard_normal((VOCAB, 64)).astype(np.float32) * 0.02).view(np.uint32) >> 16
    value = value.astype(np.uint16)
    start = time.perf_counter()
    for i in range(steps):
        array.resize((i + 1, VOCAB, 64))
        array[i] = value
    write = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for i in range(steps):
        array[i]
    return write, (time.perf_counter() - start) / steps


def requests_for_one_step(url: str) -> list[str]:
    """The keys fetched (get/exists) to read one step of embeddings after opening."""
    import wordybird

    requested: list[str] = []
    originals = {m: getattr(storage.S3Store, m) for m in ("get", "exists")}

    def counting(method: str) -> Callable[..., object]:
        def call(self: storage.S3Store, key: str, *args: object, **kwargs: object) -> object:
            requested.append(f"{method} {key}")
            return originals[method](self, key, *args, **kwargs)

        return call

    for method in originals:
        setattr(storage.S3Store, method, counting(method))
    try:
        with wordybird.open(url) as rec:
            requested.clear()
            rec["embeddings"][len(rec) // 2]
    finally:
        for method, original in originals.items():
            setattr(storage.S3Store, method, original)
    return requested


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per recording")
    parser.add_argument("--repeats", type=int, default=3, help="recordings per place")
    args = parser.parse_args(argv)
    os.environ.update(CREDENTIALS)
    server, endpoint = start_server()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    bucket = make_bucket(endpoint)
    url = f"s3://{bucket}/bench.zarr"
    inputs = synthetic_walk(DISTINCT_STEPS)
    mb = step_nbytes(inputs[0]) / 1e6
    workdir = Path(tempfile.mkdtemp(prefix="wordybird-bench-s3-"))
    try:
        disk, s3 = [], []
        for _ in range(args.repeats):
            disk.append(seconds_per_step(workdir / "bench.zarr", inputs, args.steps))
            s3.append(seconds_per_step(url, inputs, args.steps))
        d, s = statistics.median(disk), statistics.median(s3)
        print(f"recording {args.steps} steps of {mb:.1f} MB, median of {args.repeats}:")
        print(f"  local disk  {d * 1e3:7.0f} ms/step  {mb / d:6.0f} MB/s")
        print(f"  S3 (moto)   {s * 1e3:7.0f} ms/step  {mb / s:6.0f} MB/s   S3/disk: {d / s:.2f}x")

        requested = requests_for_one_step(url)
        chunks = [r for r in requested if "/c/" in r]
        print(f"reading one step of embeddings after open: {len(requested)} requests,")
        print(f"  all for that step's {len(chunks)} chunks: {len(chunks) == len(requested)}")
        for line in requested:
            print(f"    {line}")

        from obstore.store import S3Store

        stores: dict[str, Callable[[], zarr.abc.store.Store]] = {
            "ObjectStore (obstore)": lambda: zarr.storage.ObjectStore(
                S3Store(
                    bucket,
                    prefix=f"raw-{uuid.uuid4().hex[:6]}",
                    endpoint=endpoint,
                    region="us-east-1",
                    virtual_hosted_style_request=False,
                    client_options={"allow_http": True},
                )
            )
        }
        try:
            import s3fs  # noqa: F401  (only compared when installed)

            stores["FsspecStore (s3fs)"] = lambda: zarr.storage.FsspecStore.from_url(
                f"s3://{bucket}/raw-{uuid.uuid4().hex[:6]}",
                storage_options={"endpoint_url": endpoint},
            )
        except ImportError:
            print("(s3fs is not installed: FsspecStore not compared)")
        print("one [50257, 64] array, 10 steps, through each zarr store:")
        for name, make in stores.items():
            write, read = store_speeds(make, 10)
            print(f"  {name:22s} write {write * 1e3:5.0f} ms/step  read {read * 1e3:5.0f} ms/step")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    main()
