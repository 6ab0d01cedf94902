"""Opening a recording, whatever holds it: the one entry to every reader.

A Zarr store (a folder, a run folder holding ``recording.zarr``, or an ``s3://`` URL), an
exported safetensors file, or a split export each have their own reader; :func:`open` picks
it from the path, and every reader is a :class:`~wordybird.recording.Recording`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from wordybird.errors import RecordingNotFoundError, WordybirdError
from wordybird.export.layout import INDEX_SUFFIX, index_path
from wordybird.export.reader import SafetensorsRecording, SplitSafetensorsRecording
from wordybird.recorder.reader import ZarrRecording
from wordybird.recording import Recording
from wordybird.storage import is_url


def open(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, str] | None = None
) -> Recording:
    """Open a recording lazily: a Zarr store (a folder or an ``s3://bucket/prefix`` URL,
    with obstore ``storage_options`` overriding the AWS environment variables), an
    exported ``.safetensors`` file, or a split export (its ``.index.json``, or the name it
    was exported to).

    Example::

        import wordybird

        with wordybird.open("runs/wb1") as rec:  # the run folder: its recording.zarr
            print(rec.steps[-1], rec.fields)
            w = rec["embeddings"][-1]  # one step, a torch tensor in its stored dtype
            a = rec["embeddings"].numpy(-1)  # the same as numpy, without torch
    """
    if is_url(path) or Path(path).is_dir():
        return ZarrRecording(path, storage_options)
    if storage_options:
        raise WordybirdError(f"storage options apply to s3:// URLs, not to {path}")
    p = Path(path)

    if p.is_file():
        if p.name.endswith(INDEX_SUFFIX):
            return SplitSafetensorsRecording(p)
        return SafetensorsRecording(p)
    if index_path(p).is_file():
        return SplitSafetensorsRecording(index_path(p))
    if not p.exists():
        raise RecordingNotFoundError(f"{p} does not exist")
    raise WordybirdError(f"{p} is neither a recording folder nor a safetensors file")
