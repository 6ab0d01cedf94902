"""Where recordings live and how wordybird reaches them: a local folder or an S3 bucket.

Everything above this package reaches a recording through the zarr store API only (get,
set, exists, list_dir, delete_dir, getsize_prefix) and the writer's :meth:`put`, so that the
commit protocol is the same code on a disk and in a bucket. The pieces, each a private
module re-exported here:

- ``_location``: :class:`Location` (a path, or an ``s3://bucket/prefix`` URL with its
  options) and the run folder's :data:`RUN_RECORDING`;
- ``_local`` and ``_s3``: the two stores, with atomic single-object writes;
- ``_stores``: :func:`open_store` and what every caller does with a store;
- ``_faults``: the commit protocol's fault points, where tests kill a process or fill a disk;
- ``_misses``: missing chunks noted as reads happen (a missing chunk is damage);
- ``_objects``: single objects beside an ``s3://`` recording (run.json, masks, summary).
"""

from wordybird.storage._faults import fault_point, set_fault_hook
from wordybird.storage._local import PARTIAL_SUFFIX, LocalStore, put_file
from wordybird.storage._location import RUN_RECORDING, Location, is_url
from wordybird.storage._misses import missing_keys
from wordybird.storage._objects import (
    delete_object,
    delete_prefix,
    get_object,
    holds_keys,
    object_exists,
    put_object,
)
from wordybird.storage._s3 import S3Store
from wordybird.storage._stores import RecordingDisk, any_key, gather_all, open_store

__all__ = [
    "PARTIAL_SUFFIX",
    "RUN_RECORDING",
    "LocalStore",
    "Location",
    "RecordingDisk",
    "S3Store",
    "any_key",
    "delete_object",
    "delete_prefix",
    "fault_point",
    "gather_all",
    "get_object",
    "holds_keys",
    "is_url",
    "missing_keys",
    "object_exists",
    "open_store",
    "put_file",
    "put_object",
    "set_fault_hook",
]
