"""Streaming recorder: snapshot → bounded queue → background Zarr writes; and its reader."""

from wordybird.errors import WordybirdError
from wordybird.recorder.reader import FieldView, Recording, ZarrRecording
from wordybird.recorder.writer import StreamingRecorder

__all__ = ["FieldView", "Recording", "StreamingRecorder", "WordybirdError", "ZarrRecording"]
