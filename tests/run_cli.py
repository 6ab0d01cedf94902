"""The ``wordybird`` command in a subprocess, as a user runs it (one helper for every test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m wordybird.cli ARGS``: its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "wordybird.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
