"""The `wordybird` command itself: help, version, and every registered subcommand loads."""

from __future__ import annotations

import pytest

from run_cli import run_cli
from wordybird import __version__
from wordybird.cli import COMMANDS


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name: str) -> None:
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_unknown_command_fails() -> None:
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "no-such-command" in result.stderr


def test_a_commands_exit_status_reaches_the_shell(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import click

    from wordybird import cli

    @click.command()
    @click.pass_context
    def fails(ctx: click.Context) -> None:
        ctx.exit(3)

    @click.command()
    def no_space() -> None:
        raise OSError(28, "No space left on device", "/full/disk/x.zarr")

    @click.command()
    def no_extra() -> None:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setitem(cli.COMMANDS, "no-extra", f"{__name__}:_NO_EXTRA")
    monkeypatch.setitem(globals(), "_NO_EXTRA", no_extra)
    monkeypatch.setitem(cli.COMMANDS, "fails", f"{__name__}:_FAILS")
    monkeypatch.setitem(cli.COMMANDS, "no-space", f"{__name__}:_NO_SPACE")
    monkeypatch.setitem(globals(), "_FAILS", fails)
    monkeypatch.setitem(globals(), "_NO_SPACE", no_space)
    with pytest.raises(SystemExit) as exited:
        cli.main(["fails"])
    assert exited.value.code == 3
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-space"])
    assert exited.value.code == 1
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-extra"])
    assert exited.value.code == 1
    assert "pip install 'wordybird[analysis]'" in capsys.readouterr().err
