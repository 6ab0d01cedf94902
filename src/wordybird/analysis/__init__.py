"""The bf16 lattice-hop / freeze analysis of a recording (``wordybird analyze``).

- :func:`analyze` — per-step hop fractions, hop sizes in ULPs, displacements and the hops
  predicted from the recorded Adam state, for trained and untrained tokens.
- :func:`load_masks` / :func:`default_masks_path` — which tokens are (un)trained.
- :func:`ulp_distance`, :func:`spacing_toward` — the bf16 lattice itself.
"""

from wordybird.analysis.hops import Analysis, analyze
from wordybird.analysis.lattice import spacing_toward, ulp_distance
from wordybird.analysis.masks import TokenMasks, default_masks_path, load_masks

__all__ = [
    "Analysis",
    "TokenMasks",
    "analyze",
    "default_masks_path",
    "load_masks",
    "spacing_toward",
    "ulp_distance",
]
