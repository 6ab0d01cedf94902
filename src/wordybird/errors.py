"""The one exception type users see.

Every failure a user can cause (bad path, bad file, wrong shapes, full disk, …) is raised as
a :class:`WordybirdError` with a message that names what is wrong, so the CLI can print it
as one line and exit non-zero instead of dumping a traceback.
"""


class WordybirdError(Exception):
    """A user-facing failure with a clear, single-line explanation."""


class DamagedRecordingError(WordybirdError):
    """Part of a recording on disk cannot be read: a chunk fails its checksum or does not
    decode, a chunk file is missing, or an array's metadata is broken. The message names
    the field and the steps; the rest of the recording still reads."""
