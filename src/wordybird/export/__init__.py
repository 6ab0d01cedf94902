"""Export a recording to safetensors (streamed), and read such files lazily.

``wordybird.export(recording, out, …)`` — this package is callable as its one function,
:func:`~wordybird.export.writer.export_safetensors` — writes the notebook's layout without
holding the recording in memory, as one file or split into several. ``wordybird.open``
reads the results through the same interface as a store. Nothing here imports torch.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from wordybird.export.writer import export_safetensors


class _CallableModule(types.ModuleType):
    """``wordybird.export`` is both this package and the export function: Python binds a
    subpackage's name on its parent once imported, so a function of the same name in the
    package root would be replaced by the package; making the package callable keeps one
    name for one job."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export_safetensors(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["export_safetensors"]
