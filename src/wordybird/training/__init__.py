"""The Wordybird experiments on the Hugging Face Trainer (the ``[train]`` extra).

The Hugging Face libraries are told there is no network before any of them is imported:
this package's modules import transformers, and it reads these settings at import.
"""

from wordybird.training.tokenizer import set_offline

set_offline()
