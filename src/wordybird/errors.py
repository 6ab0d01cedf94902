"""The one exception type users see.

Every failure a user can cause (bad path, bad file, wrong shapes, full disk, …) is raised as
a :class:`WordybirdError` with a message that names what is wrong, so the CLI can print it
as one line and exit non-zero instead of dumping a traceback.
"""

from collections.abc import Iterable
from pathlib import Path


class WordybirdError(Exception):
    """A user-facing failure with a clear, single-line explanation."""


class RecordingNotFoundError(WordybirdError, FileNotFoundError):
    """A recording (a folder, a file, an ``s3://`` prefix) that does not exist. Also a
    ``FileNotFoundError``, so ``except FileNotFoundError`` catches it as it would ``open``'s."""


class DamagedRecordingError(WordybirdError):
    """Part of a recording on disk cannot be read: a chunk fails its checksum or does not
    decode, a chunk file is missing, or an array's metadata is broken. The message names
    the field and the steps; the rest of the recording still reads."""


class StoppedWithMain(WordybirdError):
    """In a multi-process run, raised in the processes other than the main one when the main
    one failed or was interrupted: the main process prints the error, the others exit
    non-zero without repeating it."""


def no_folder(folder: Path) -> str:
    """Why ``folder`` cannot take a new file: it does not exist, or it is a file.

    Every writer words this the same way, and a file typed where a folder was meant
    (``notes.txt/out.safetensors``) is not reported as a folder that does not exist.
    """
    if folder.exists():
        return f"{folder} is a file, not a folder"
    return f"folder {folder} does not exist"


class MissingExtraError(WordybirdError, ModuleNotFoundError):
    """A feature's optional dependency is not installed; the message names the extra that
    installs it (``pip install 'wordybird[record]'``). Also a ``ModuleNotFoundError``, so
    code that guards an optional import the usual way keeps working."""


def no_field(where: object, field: str, fields: Iterable[str]) -> KeyError:
    """The error for a field a recording does not hold (a ``KeyError``, as a mapping's)."""
    return KeyError(f"{where} has no field {field!r}; it has {', '.join(fields)}")


class FreezeWarning(UserWarning):
    """A recorded parameter stopped moving during training: the live freeze monitor's
    warning (``wordybird.capture.monitor``). The message names the parameter, the step it
    froze from, the moving fraction and the cause; so do the attributes (``at_step``: the
    recorded step at which the monitor saw it, ``fraction`` its moving fraction then)."""

    def __init__(
        self,
        message: str,
        *,
        parameter: str,
        step: int | None,
        at_step: int,
        fraction: float | None,
        cause: str | None,
    ) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.step = step
        self.at_step = at_step
        self.fraction = fraction
        self.cause = cause
