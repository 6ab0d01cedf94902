"""The ``wordybird`` command.

Subcommands live beside the code they drive (``training/cli.py``, ``export/cli.py``, …) and
are imported only when invoked, so ``wordybird --help`` answers without importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from wordybird import __version__
from wordybird.errors import StoppedWithMain, WordybirdError
from wordybird.extras import needing_extras

#: command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "check": "wordybird.recorder.cli:check",
    "export": "wordybird.export.cli:export",
    "inspect": "wordybird.inspection:inspect",
    "analyze": "wordybird.analysis.cli:analyze",
    "train": "wordybird.training.cli:train",
    "continue": "wordybird.training.cli:continue_",
    "masks": "wordybird.training.cli:masks",
}
#: commands whose extra installs everything they need (the others name each module's own)
COMMAND_EXTRAS: dict[str, str] = {
    "analyze": "analysis",
    "train": "train",
    "continue": "train",
    "masks": "train",
}


class _LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wordybird")
def cli() -> None:
    """Record every step's bf16 training tensors without running out of memory."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user-facing failures become one line on stderr and exit status 1.

    An OSError that reaches this far (a full disk, a folder without write permission, a
    file vanishing mid-read) is such a failure too: its message names the path.
    """
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "")
    try:
        # without standalone mode, a command's ctx.exit(code) comes back as the return value
        with needing_extras(f"wordybird {command}".strip(), COMMAND_EXTRAS.get(command)):
            code = cli.main(args=argv, standalone_mode=False)
    except StoppedWithMain:
        sys.exit(1)  # the main process prints the error
    except (WordybirdError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code:
        sys.exit(code)


def console_main() -> None:
    """The ``wordybird`` program: :func:`main`, then its exit. After S3 access the exit skips
    the interpreter's teardown: obstore's Tokio worker threads outlive every request and are
    never told to stop, and one that wakes while the interpreter finalizes aborts the whole
    process (SIGABRT; seen once after a finished ``wordybird analyze`` of an s3://
    recording, and reported for other pyo3/Tokio extensions). By then every file the command
    wrote is closed; ``main`` itself stays safe to call in a process that goes on."""
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    if "obstore" not in sys.modules:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
