"""Export a recording to one safetensors file (streamed), read such files lazily, inspect either.

- :func:`export_safetensors` — a Zarr recording (or a step range / fields of it) as the
  notebook's safetensors file, without holding it in memory.
- :class:`SafetensorsRecording` — an exported file opened lazily (``wordybird.open`` does it).
- :func:`inspect_recording` — what a store or an exported file holds.
"""

from wordybird.export.inspect import inspect_recording
from wordybird.export.reader import SafetensorsRecording
from wordybird.export.writer import export_safetensors

__all__ = ["SafetensorsRecording", "export_safetensors", "inspect_recording"]
