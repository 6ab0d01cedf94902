"""Where a recording lives: a local path, or an ``s3://bucket/prefix`` URL with its options.

A :class:`Location` only names a place; :func:`~wordybird.storage.open_store` reaches it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wordybird.errors import WordybirdError

#: The recording inside a run folder (what ``wordybird train --out`` makes): readers given
#: the run folder read it.
RUN_RECORDING = "recording.zarr"


def is_url(where: object) -> bool:
    """Whether ``where`` names object storage (``s3://…``) rather than a local path."""
    return isinstance(where, str) and "://" in where


@dataclass(frozen=True)
class Location:
    """Where a recording lives: a local folder, or a prefix in an S3 bucket.

    ``str(location)`` is the path or URL as the user gave it, for messages.
    """

    text: str
    local: Path | None
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, where: str | os.PathLike[str] | Location, options: Mapping[str, str] | None = None
    ) -> Location:
        if isinstance(where, Location):
            return where if options is None else cls(where.text, where.local, dict(options))
        if is_url(where):
            if not where.startswith("s3://") or len(where) <= len("s3://"):
                raise WordybirdError(
                    f"{where}: only local paths and s3://bucket/prefix URLs are supported"
                )
            return cls(where.rstrip("/"), None, dict(options or {}))
        if options:
            raise WordybirdError(
                f"storage options ({', '.join(options)}) apply to s3:// URLs, not to {where}"
            )
        return cls(os.fspath(where), Path(where))

    def __str__(self) -> str:
        return self.text

    def child(self, name: str) -> Location:
        """``name`` inside this place: a file in the folder, a key below the prefix."""
        if self.local is not None:
            return Location(os.path.join(self.text, name), self.local / name)
        return Location(f"{self.text}/{name}", None, self.options)

    def beside(self, name: str) -> Location:
        """``name`` next to this place: in the folder, or below the prefix, that holds it."""
        if self.local is not None:
            return Location(str(self.local.parent / name), self.local.parent / name)
        head, sep, _ = self.text.removeprefix("s3://").rpartition("/")
        if not sep:
            raise WordybirdError(f"{self} is a bucket's root: nothing lies beside it")
        return Location(f"s3://{head}/{name}", None, self.options)
