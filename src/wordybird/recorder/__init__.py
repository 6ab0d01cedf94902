"""Streaming recorder: snapshot → bounded queue → background Zarr writes; and its reader.

``StreamingRecorder`` (torch) and ``ZarrRecording`` (numpy) are imported on first use, so
reading a store never imports torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "StreamingRecorder":
        from wordybird.extras import needing_extras

        with needing_extras("wordybird.StreamingRecorder"):
            from wordybird.recorder.writer import StreamingRecorder

        return StreamingRecorder
    if name == "ZarrRecording":
        from wordybird.recorder.reader import ZarrRecording

        return ZarrRecording
    raise AttributeError(f"module 'wordybird.recorder' has no attribute {name!r}")


__all__ = ["StreamingRecorder", "ZarrRecording"]
