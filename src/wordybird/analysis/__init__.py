"""The lattice-hop / freeze analysis of a recording (``wordybird analyze``).

- :func:`analyze` — the notebook's layout (``embeddings`` + token masks): per-step hop
  fractions, hop sizes in ULPs, displacements and the hops predicted from the recorded Adam
  state, for trained and untrained tokens (``hops.py``).
- :func:`analyze_parameters` — any recording by name (``<name>/value``, ``<name>/grad``,
  the optimizer's state): the same question per parameter, with a verdict (frozen from
  which step, why, and what would have kept it moving; ``parameters.py``, ``freeze.py``).
- :func:`load_masks` / :func:`default_masks_path` — which tokens are (un)trained.
- :func:`ulp_distance`, :func:`spacing_toward` — the float lattice itself.

Names are imported on first use: the by-name analysis (and the live monitor, which shares
its verdict) needs numpy only, while the notebook's analysis and the masks need torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module defining it
_WHERE = {
    "Analysis": "hops",
    "analyze": "hops",
    "ParametersAnalysis": "parameters",
    "analyze_parameters": "parameters",
    "TokenMasks": "masks",
    "default_masks_path": "masks",
    "load_masks": "masks",
    "spacing_toward": "lattice",
    "ulp_distance": "lattice",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'wordybird.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wordybird.analysis.{module}"), name)


__all__ = sorted(_WHERE)
