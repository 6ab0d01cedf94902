"""Corpus, token ids, the notebook's ``TokenDataset`` and its token masks.

The notebook's 2 MB FineWeb sample cannot be fetched offline, so the default corpus is the
Python standard library's own documentation (``pydoc_data.topics`` plus every docstring of
at least 40 characters in the stdlib's modules): about the notebook's size, no extra
dependency, and built deterministically. It differs between Python versions, which is why
every run records the corpus's SHA-256 and token count.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from wordybird.errors import WordybirdError, no_folder
from wordybird.training.cache import cache_entry, write_entry
from wordybird.training.tokenizer import VOCAB_SIZE, load_tokenizer

#: docstrings shorter than this are mostly one-liners ("Return x.") that add little text
MIN_DOCSTRING_CHARS = 40

_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Corpus:
    """A training text and where it came from."""

    text: str
    source: str  # a file path, or "python-stdlib-docs"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8"))


def _stdlib_docstrings() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib).parts
        if "site-packages" in relative or "dist-packages" in relative:
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # test data written in old syntax, unreadable files: not documentation
        for node in ast.walk(tree):
            if isinstance(node, _DOCSTRING_OWNERS):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    texts.append(doc)
    return texts


def build_default_corpus_text() -> str:
    """The stdlib documentation corpus, identical for identical Python installations."""
    from pydoc_data.topics import topics

    parts = [topics[key] for key in sorted(topics)]
    parts.extend(_stdlib_docstrings())
    return "\n\n".join(part.strip() for part in parts)


def default_corpus() -> Corpus:
    """The default corpus; built once per Python installation, then read from the cache."""
    key = hashlib.sha256(f"{sys.version}|{sysconfig.get_paths()['stdlib']}".encode()).hexdigest()
    cached = cache_entry("corpus", f"stdlib-docs-{key[:16]}.txt")
    if cached.is_file():
        return Corpus(cached.read_text(encoding="utf-8"), "python-stdlib-docs")
    text = build_default_corpus_text()
    write_entry(cached, text.encode("utf-8"))
    return Corpus(text, "python-stdlib-docs")


def read_corpus(path: str | os.PathLike[str]) -> Corpus:
    """A UTF-8 text file as a corpus; anything else is refused with a clear message."""
    path = Path(path)
    if not path.exists():
        raise WordybirdError(f"corpus {path} does not exist")
    if not path.is_file():
        raise WordybirdError(f"corpus {path} is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise WordybirdError(f"corpus {path} is empty")
    if b"\x00" in data:
        raise WordybirdError(f"corpus {path} looks binary (it contains NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WordybirdError(
            f"corpus {path} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from exc
    return Corpus(text, str(path))


def load_corpus(path: str | os.PathLike[str] | None) -> Corpus:
    """``path``'s text, or the default corpus when ``path`` is None."""
    return default_corpus() if path is None else read_corpus(path)


def tokenize(corpus: Corpus) -> torch.Tensor:
    """The corpus's GPT-2 token ids (int64), cached by the text's SHA-256.

    Tokenizing 2 MB takes seconds; every later run on the same text reads the cache.
    """
    cached = cache_entry("tokens", f"{corpus.sha256}.npy")
    if cached.is_file():
        try:
            return torch.from_numpy(np.load(cached).astype(np.int64))
        except (OSError, ValueError):
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt below
    ids = np.asarray(load_tokenizer().encode(corpus.text), dtype=np.uint16)
    with tempfile.TemporaryFile() as buffer:
        np.save(buffer, ids)
        buffer.seek(0)
        write_entry(cached, buffer.read())
    return torch.from_numpy(ids.astype(np.int64))


class TokenDataset(Dataset):
    """The notebook's dataset: every window of ``seq_len + 1`` tokens, overlapping.

    Item ``i`` is ``input_ids = tokens[i : i + seq_len]`` and ``labels`` shifted by one.
    (GPT-2 shifts labels again inside its loss; the notebook did the same, and we keep its
    training signal unchanged.)
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int) -> None:
        if len(tokens) < seq_len + 1:
            raise WordybirdError(
                f"the corpus has {len(tokens)} tokens, fewer than one training window of "
                f"{seq_len + 1}"
            )
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, len(self.tokens) - self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        chunk = self.tokens[index : index + self.seq_len + 1]
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


def token_masks(tokens: torch.Tensor, vocab_size: int = VOCAB_SIZE) -> dict[str, torch.Tensor]:
    """The notebook's mask file: a token is "trained" when it occurs in the corpus.

    GPT-2's tokenizer gives ids up to 50256: a model with a smaller vocabulary (another
    model's checkpoint) cannot train on them; the error names the corpus's largest id.
    """
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise WordybirdError(
            f"the corpus has token id {int(tokens.max())}, outside the model's vocabulary of "
            f"{vocab_size} (GPT-2's tokenizer needs {VOCAB_SIZE})"
        )
    trained = torch.zeros(vocab_size, dtype=torch.bool)
    trained[tokens] = True
    return {
        "trained_mask": trained,
        "untrained_mask": ~trained,
        "trained_indices": torch.nonzero(trained).flatten().to(torch.int64),
        "untrained_indices": torch.nonzero(~trained).flatten().to(torch.int64),
    }


def save_token_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write the masks as the safetensors file the notebook loads.

    safetensors reports an I/O failure (a read-only folder, ``path`` being a folder) as its
    own SafetensorError, not an OSError: it becomes a WordybirdError here like any other.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    if not path.parent.is_dir():
        raise WordybirdError(f"cannot write {path}: {no_folder(path.parent)}")
    try:
        save_file(masks, str(path))
    except (SafetensorError, OSError) as exc:
        raise WordybirdError(f"cannot write {path}: {exc}") from exc
