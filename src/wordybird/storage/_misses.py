"""Missing chunks are damage: the keys a read asked for that were not there.

zarr reads a missing chunk as its fill value, silently; in a recording every chunk of a
committed step exists, so a missing one is damage. The stores note each miss as reads
happen, which costs no request of its own (an ``exists`` per chunk would double a read's
requests on S3).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

#: While a read runs under :func:`missing_keys`: the keys it asked for that do not exist.
_missing: ContextVar[set[str] | None] = ContextVar("wordybird_missing_keys", default=None)


@contextmanager
def missing_keys() -> Iterator[set[str]]:
    """Collect the keys that reads in this block found missing.

    The context reaches zarr's event-loop tasks: ``sync`` submits the read with a copy of
    the caller's context, and tasks inherit it.
    """
    found: set[str] = set()
    token = _missing.set(found)
    try:
        yield found
    finally:
        _missing.reset(token)


class NotesMisses:
    """Mixed into the stores: report each missing key to :func:`missing_keys`."""

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value = await super().get(key, prototype, byte_range)  # type: ignore[misc]
        if value is None:
            found = _missing.get()
            if found is not None:
                found.add(key)
        return value
