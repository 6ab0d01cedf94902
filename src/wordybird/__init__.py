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

from typing import TYPE_CHECKING, Any

from wordybird._version import __version__
from wordybird.errors import WordybirdError

if TYPE_CHECKING:
    from wordybird.recording import Recording


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
    if name == "open":
        from wordybird.opening import open

        return open
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
    "__version__",
    "export",
    "open",
    "watch",
]
