"""Single objects beside a recording in a bucket (a run's run.json, token masks, summary).

A local run keeps these as files in its run folder; an ``s3://`` run puts copies beside its
recording, each one PUT (replaced whole or not at all), so the bucket explains itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from wordybird.errors import WordybirdError
from wordybird.storage._location import Location
from wordybird.storage._s3 import S3Store
from wordybird.storage._stores import any_key, open_store


def _object(location: Location, *, read_only: bool) -> tuple[S3Store, str]:
    """The bucket's store and the object's key, for an ``s3://bucket/key`` location."""
    if location.local is not None:
        raise ValueError(f"{location} is not in object storage")
    bucket, _, key = location.text.removeprefix("s3://").partition("/")
    return S3Store.at(f"s3://{bucket}", location.options, read_only=read_only), key


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """obstore's errors (no server, no credentials, no such bucket) as one line."""
    try:
        yield
    except WordybirdError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        raise WordybirdError(f"{what}: {text.splitlines()[0] if text else repr(exc)}") from exc


def get_object(location: Location) -> bytes | None:
    """The object at an ``s3://`` location, None if there is none."""
    store, key = _object(location, read_only=True)
    with _s3_errors(f"cannot read {location}"):
        found = sync(store.get(key, default_buffer_prototype()))
    return None if found is None else found.to_bytes()


def object_exists(location: Location) -> bool:
    """Whether an object is at an ``s3://`` location."""
    store, key = _object(location, read_only=True)
    with _s3_errors(f"cannot reach {location}"):
        return sync(store.exists(key))


def put_object(location: Location, data: bytes) -> None:
    """Write one object (one PUT: replaced whole or not at all)."""
    store, key = _object(location, read_only=False)
    with _s3_errors(f"cannot write {location}"):
        sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def delete_object(location: Location) -> None:
    """Remove the object at an ``s3://`` location, if there is one."""
    store, key = _object(location, read_only=False)
    with _s3_errors(f"cannot delete {location}"):
        sync(store.delete(key))


def holds_keys(location: Location) -> bool:
    """Whether any object lies below an ``s3://`` prefix (a recording, say)."""
    store, key = _object(location, read_only=True)
    with _s3_errors(f"cannot reach {location}"):
        return sync(any_key(store, f"{key}/" if key else ""))


def delete_prefix(location: Location) -> None:
    """Remove every object below an ``s3://`` prefix (a recording being replaced)."""
    store = open_store(location, read_only=False)
    with _s3_errors(f"cannot delete {location}"):
        sync(store.delete_dir(""))
