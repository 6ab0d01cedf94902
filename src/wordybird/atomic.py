"""Files that appear under their name only when complete: one helper for every file
wordybird writes whole (exports, the corpus and token caches, the tokenizer's files).

The data goes to a hidden ``.NAME.PID.RANDOM.tmp`` beside the destination (same file
system, so the final rename is atomic), is fsynced, renamed into place, and the folder is
fsynced, so neither a crash nor a power loss leaves a partial file under the name. An
exception or Ctrl-C removes the temporary; what a ``kill -9`` leaves is hidden, and removed
by the next write to that name once its process is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from wordybird.errors import WordybirdError

#: Permissions of a written file (before the umask of whoever reads it: it is data).
FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[int]:
    """A file descriptor whose content appears at ``out`` only if the block completes.

    Write to the descriptor; the module's docstring says what happens around it.
    """
    _remove_stale_temporaries(out)
    temporary = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        raise WordybirdError(f"cannot write in {out.parent}: {exc}") from exc
    try:
        yield fd
        os.fsync(fd)
        os.replace(temporary, out)
        fsync_folder(out.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files of earlier writes to ``out`` whose process has died."""
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = leftover.name[len(out.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries: a rename in it survives a power loss only once they are."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` as the whole content of ``path``, which appears only once complete."""
    with atomic_file(path) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
