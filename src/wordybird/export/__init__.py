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


class _CallableModule(types.ModuleType):
    """``wordybird.export`` is both this package and the export function: Python binds a
    subpackage's name on its parent once imported, so a function of the same name in the
    package root would be replaced by the package; making the package callable keeps one
    name for one job."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        from wordybird.export.writer import export_safetensors

        return export_safetensors(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # the writer (and zarr with it) loads on first use: reading an export needs neither
        if name == "export_safetensors":
            from wordybird.export.writer import export_safetensors

            return export_safetensors
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["export_safetensors"]
