"""Command-line pieces shared by the commands that read or write a recording."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wordybird.storage import is_url

F = TypeVar("F", bound=Callable[..., Any])


class PathOrURL(click.ParamType):
    """A local path (as a ``Path``) or an ``s3://bucket/prefix`` URL (kept a ``str``:
    ``click.Path`` would fold its ``//``)."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Path) or is_url(value):
            return value
        return Path(value)


def _parse_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx, param)
        options[key.strip()] = value
    return options


def storage_options(command: F) -> F:
    """The ``--storage-option KEY=VALUE`` escape hatch for ``s3://`` recordings."""
    return click.option(
        "--storage-option",
        "storage_options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_parse_options,
        help="For an s3:// recording: an S3 setting (endpoint, region, access_key_id, "
        "allow_http, …) overriding the AWS environment variables (repeatable).",
    )(command)
