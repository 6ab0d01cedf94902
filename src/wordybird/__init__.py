"""wordybird: record every step's bf16 training tensors without running out of memory.

The public surface is small:

- :func:`open` — a recording (Zarr store, exported safetensors file or split export), read
  lazily through one :class:`~wordybird.recording.Recording` interface.
- :class:`StreamingRecorder` — write a recording one step at a time.
- :class:`RecorderCallback` — record a Hugging Face ``Trainer`` run.
- :func:`watch` — record a plain PyTorch loop at every ``optimizer.step()``.
- :func:`export` — a recording as the notebook's safetensors file(s), streamed.
- :class:`WordybirdError` — every failure a user can cause.
- :class:`FreezeWarning` — the live freeze monitor's warning: a parameter stopped moving.

Everything is imported on first use: ``import wordybird`` costs almost nothing, and reading
or exporting never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wordybird.errors import WordybirdError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wordybird.recording import Recording


def open(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, str] | None = None
) -> Recording:
    """Open a recording lazily: a Zarr store (a folder or an ``s3://bucket/prefix`` URL,
    with obstore ``storage_options`` overriding the AWS environment variables), an
    exported ``.safetensors`` file, or a split export (its ``.index.json``, or the name it
    was exported to)."""
    from wordybird.location import is_url

    if is_url(path) or Path(path).is_dir():
        from wordybird.recorder.reader import ZarrRecording

        return ZarrRecording(path, storage_options)
    if storage_options:
        raise WordybirdError(f"storage options apply to s3:// URLs, not to {path}")
    p = Path(path)
    from wordybird.export.layout import INDEX_SUFFIX, index_path
    from wordybird.export.reader import SafetensorsRecording, SplitSafetensorsRecording

    if p.is_file():
        if p.name.endswith(INDEX_SUFFIX):
            return SplitSafetensorsRecording(p)
        return SafetensorsRecording(p)
    if index_path(p).is_file():
        return SplitSafetensorsRecording(index_path(p))
    if not p.exists():
        raise WordybirdError(f"{p} does not exist")
    raise WordybirdError(f"{p} is neither a recording folder nor a safetensors file")


def __getattr__(name: str) -> Any:
    from wordybird.extras import needing_extras

    if name == "StreamingRecorder":
        with needing_extras("wordybird.StreamingRecorder"):
            from wordybird.recorder.writer import StreamingRecorder

        return StreamingRecorder
    if name == "RecorderCallback":
        with needing_extras("wordybird.RecorderCallback", "train"):
            from wordybird.training.callback import RecorderCallback

        return RecorderCallback
    if name in ("watch", "Watch"):
        with needing_extras(f"wordybird.{name}"):
            from wordybird.capture import loop

        return getattr(loop, name)
    if name == "export":  # the subpackage, callable as its export function
        import wordybird.export

        return wordybird.export
    if name == "FreezeWarning":
        from wordybird.errors import FreezeWarning

        return FreezeWarning
    if name == "Recording":
        from wordybird.recording import Recording

        return Recording
    raise AttributeError(f"module 'wordybird' has no attribute {name!r}")


__all__ = [
    "FreezeWarning",
    "RecorderCallback",
    "Recording",
    "StreamingRecorder",
    "WordybirdError",
    "export",
    "open",
    "watch",
]
