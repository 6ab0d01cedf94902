"""A recording in an S3 bucket (``s3://bucket/prefix``): zarr's ObjectStore over obstore.

obstore was chosen over s3fs (zarr's ``FsspecStore``) by measurement against a local S3
server (benchmarks/bench_s3.py). Chunks stay below obstore's 5 MiB multipart threshold, so
every object is one PUT, atomic by itself: nothing to rename, nothing to fsync (an
acknowledged PUT is durable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import zarr.storage
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync

from wordybird.errors import WordybirdError
from wordybird.extras import needing_extras
from wordybird.storage._faults import fault_point
from wordybird.storage._misses import NotesMisses

#: obstore's client options (its ClientConfig); every other storage option is S3 config.
_CLIENT_OPTIONS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)
#: Where the AWS tools read a custom endpoint (a local or S3-compatible server) from.
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


class S3Store(NotesMisses, zarr.storage.ObjectStore):
    """zarr's ObjectStore on an S3 bucket, with a fault point before every write and
    :meth:`put`, the writer's synchronous write of an encoded chunk."""

    @classmethod
    def at(cls, url: str, options: Mapping[str, str], *, read_only: bool) -> S3Store:
        """The store for ``s3://bucket/prefix``: credentials, region and endpoint from the
        usual AWS environment variables, overridden by ``options`` (obstore's S3 config
        keys such as ``endpoint``, ``region``, ``access_key_id``, or client options such
        as ``allow_http``). A custom endpoint (a local or S3-compatible server) gets
        path-style requests, and plain HTTP when its URL says ``http://``."""
        with needing_extras(f"{url}: an s3:// recording"):
            from obstore.store import S3Store as ObstoreS3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        config = {k: v for k, v in options.items() if k not in _CLIENT_OPTIONS}
        client = {k: v for k, v in options.items() if k in _CLIENT_OPTIONS}
        endpoint = config.get("endpoint") or next(
            (os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)), None
        )
        if endpoint:
            config = {"endpoint": endpoint, "virtual_hosted_style_request": "false", **config}
            if endpoint.startswith("http://"):
                client = {"allow_http": "true", **client}
        try:
            inner = ObstoreS3(bucket, prefix=prefix or None, config=config, client_options=client)
        except Exception as exc:  # obstore's builder errors: a bad option or value
            raise WordybirdError(f"cannot reach {url}: {exc}") from exc
        return cls(inner, read_only=read_only)

    async def set(self, key: str, value: Buffer) -> None:
        fault_point(f"write:{key}")
        await super().set(key, value)

    def put(self, key: str, parts: list[memoryview]) -> None:
        """Write the object ``key`` whole, as one PUT; blocks until it is acknowledged."""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        sync(self.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def take_folders(self) -> set[Path]:
        """No folders to flush on S3 (see :meth:`LocalStore.take_folders`)."""
        return set()
