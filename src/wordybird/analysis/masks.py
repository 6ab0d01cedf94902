"""Which tokens were trained: the masks ``wordybird masks`` writes and the analysis reads.

A token is *trained* when it occurs in the corpus (its embedding row gets gradient) and
*untrained* otherwise; the hop statistics are split by these two groups.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file

from wordybird.errors import WordybirdError
from wordybird.storage import Location, is_url

MASKS_FILENAME = "token_masks.safetensors"
#: The two groups of tokens, in the order statistics are reported.
GROUPS: tuple[str, ...] = ("untrained", "trained")


@dataclass(frozen=True)
class TokenMasks:
    """Which embedding rows belong to trained and to untrained tokens (int64 indices)."""

    path: Path | str  # the file, or its s3:// URL
    untrained: torch.Tensor
    trained: torch.Tensor


def default_masks_path(recording_path: str | os.PathLike[str]) -> Path | str:
    """Where training leaves the masks: ``token_masks.safetensors`` beside the recording
    (for an ``s3://`` recording, the URL beside it, where ``wordybird train`` copies them)."""
    if is_url(recording_path):
        try:
            return Location.of(recording_path).beside(MASKS_FILENAME).text
        except WordybirdError as exc:  # a recording at a bucket's root
            raise WordybirdError(f"{exc}: give its masks with --masks") from None
    return Path(recording_path).parent / MASKS_FILENAME


def masks_exist(
    path: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None
) -> bool:
    """Whether there is a masks file at ``path`` (a local path or an ``s3://`` URL)."""
    if is_url(path):
        from wordybird.storage import object_exists

        return object_exists(Location.of(path, storage_options))
    return Path(path).is_file()


def load_masks(
    path: str | os.PathLike[str],
    vocab_size: int,
    storage_options: Mapping[str, str] | None = None,
) -> TokenMasks:
    """Read ``trained_mask``/``untrained_mask`` (or the ``*_indices``) for a vocabulary,
    from a file or an ``s3://`` URL (reached with ``storage_options``).

    The boolean masks are the reference (the notebook's file has both forms); the index
    lists are accepted alone. Masks that do not fit the recording's vocabulary, or that put
    a token in both groups, are refused: every number downstream would be silently wrong.
    """
    data: bytes | None = None
    if is_url(path):
        from wordybird.storage import get_object

        path = str(path)
        data = get_object(Location.of(path, storage_options))
        found = data is not None
    else:
        path = Path(path)
        found = path.is_file()
    if not found:
        raise WordybirdError(
            f"token masks {path} not found; pass --masks FILE (a safetensors file with "
            "trained_mask/untrained_mask, as training writes beside the recording)"
        )
    try:
        tensors = load(data) if data is not None else load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WordybirdError(f"cannot read token masks {path}: {exc}") from exc
    indices: dict[str, torch.Tensor] = {}
    for group in GROUPS:
        mask, idx = tensors.get(f"{group}_mask"), tensors.get(f"{group}_indices")
        if mask is not None:
            if mask.dim() != 1 or mask.numel() != vocab_size:
                raise WordybirdError(
                    f"{path}: {group}_mask has shape {tuple(mask.shape)}, but the recording's "
                    f"embeddings have {vocab_size} rows"
                )
            indices[group] = torch.nonzero(mask.bool(), as_tuple=False).flatten().to(torch.int64)
        elif idx is not None:
            idx = idx.flatten().to(torch.int64)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
                raise WordybirdError(
                    f"{path}: {group}_indices range over {int(idx.min())}..{int(idx.max())}, "
                    f"outside the recording's vocabulary of {vocab_size}"
                )
            indices[group] = torch.unique(idx)
        else:
            raise WordybirdError(f"{path} has neither {group}_mask nor {group}_indices")
    if np.intersect1d(indices["trained"].numpy(), indices["untrained"].numpy()).size:
        raise WordybirdError(f"{path}: some tokens are marked both trained and untrained")
    return TokenMasks(path, untrained=indices["untrained"], trained=indices["trained"])
