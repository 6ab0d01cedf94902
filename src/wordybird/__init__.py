"""wordybird: record every step's bf16 training tensors without running out of memory.

The public surface is small:

- :func:`open` — a recording (Zarr store or exported safetensors file), read lazily.
- :class:`StreamingRecorder` — write a recording one step at a time.
- :class:`RecorderCallback` — record a Hugging Face ``Trainer`` run (``wordybird.training``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wordybird.recorder import Recording


def open(path: str | os.PathLike[str]) -> Recording:
    """Open a recording lazily: a ``.zarr`` store or an exported ``.safetensors`` file."""
    from wordybird.recorder.reader import open_recording

    return open_recording(path)


def __getattr__(name: str) -> object:
    # Imported on first use so that `import wordybird` and the CLI's --help stay fast.
    if name in ("StreamingRecorder", "Recording", "WordybirdError"):
        import wordybird.recorder as recorder

        return getattr(recorder, name)
    if name == "RecorderCallback":
        from wordybird.training.callback import RecorderCallback

        return RecorderCallback
    raise AttributeError(f"module 'wordybird' has no attribute {name!r}")


__all__ = ["RecorderCallback", "Recording", "StreamingRecorder", "WordybirdError", "open"]
