"""wordybird's cache: files a run can rebuild but need not (the default corpus, token ids,
the tokenizer's files), kept between runs under one folder.

The folder is ``$WORDYBIRD_CACHE``, else ``$XDG_CACHE_HOME/wordybird``, else
``~/.cache/wordybird``; none of them needs to exist: a fresh machine has no ``~/.cache``, so
every entry's folder is created on first use. Entries are written atomically
(``wordybird.atomic``): two runs that build the same entry at once both succeed, each
renaming a complete copy into place, and a reader never sees half of one. Under a
launcher only the main process builds them (``Processes.main_first``); the others read
what it left.

A cache that cannot be written (a read-only home, a file where a folder should be) stops
the run with one error that names the folder and says how to choose another: running on
without it would rebuild the corpus and its tokens on every run, silently.
"""

from __future__ import annotations

import os
from pathlib import Path

from wordybird.atomic import write_atomically
from wordybird.errors import WordybirdError

#: The variable that chooses the cache folder.
CACHE_VARIABLE = "WORDYBIRD_CACHE"


def cache_dir() -> Path:
    """wordybird's cache folder (it may not exist yet): ``$WORDYBIRD_CACHE``, else
    ``$XDG_CACHE_HOME/wordybird``, else ``~/.cache/wordybird``."""
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wordybird"


def cache_entry(kind: str, name: str) -> Path:
    """The path of the cache entry ``name`` among entries of ``kind`` (``"tokens"``,
    ``"corpus"``, …), its folder created (with every missing parent) if need be."""
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way (FileExistsError, NotADirectoryError), EROFS…
        raise _unusable(folder, exc) from exc
    return folder / name


def write_entry(path: Path, data: bytes) -> None:
    """Write a cache entry whole (atomically); a cache that refuses it is one clear error."""
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise _unusable(path.parent, exc) from exc
    except WordybirdError as exc:  # atomic_file's own: the temporary could not be created
        raise _unusable(path.parent, exc.__cause__ or exc) from exc


def _unusable(folder: Path, exc: BaseException) -> WordybirdError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return WordybirdError(
        f"cannot write wordybird's cache in {folder}: {reason}; set {CACHE_VARIABLE} to a "
        f"folder you can write (e.g. {CACHE_VARIABLE}=/tmp/wordybird-cache)"
    )
