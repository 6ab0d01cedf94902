"""Fault points: the places of the commit protocol where a process can die or a write fail.

Every write of the store, and each step of the protocol between them, calls
:func:`fault_point` with the point's name. Normally nothing happens. The fault-injection
tests (tests/test_recorder_faults.py) install a hook that kills the process there
(``os._exit``) or raises (a full disk), so that every window of the protocol is tested on
purpose rather than by a lucky ``kill -9``. The points:

- ``create_array`` (before each of the first step's arrays);
- ``resize`` and ``resized`` (around growing the arrays by the step being written);
- ``write:KEY`` (before every object the store writes: chunks, array metadata, the header);
- ``commit`` and ``committed`` (around the header write that commits a step);
- ``truncate`` (after truncation's header write, before chunks are deleted);
- ``remove_orphan`` and ``shrink`` (before each array removed or shrunk by a resume or a
  truncation).
"""

from __future__ import annotations

from collections.abc import Callable

#: What runs at each fault point (None: nothing); see :func:`set_fault_hook`.
_hook: Callable[[str], None] | None = None


def fault_point(point: str) -> None:
    """Mark a point of the commit protocol (see the module's docstring)."""
    if _hook is not None:
        _hook(point)


def set_fault_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Run ``hook(point)`` at every fault point from now on (None: nothing); returns the
    hook it replaces. For tests only."""
    global _hook
    previous, _hook = _hook, hook
    return previous
