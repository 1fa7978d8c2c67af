"""Text corpora and the character vocabulary of the built-in language model.

The default corpus is the English text of the Python documentation shipped in the standard
library (``pydoc_data.topics``): it is on every machine with Python, so the built-in model
trains, evaluates and tests offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CharVocab", "Splits", "pydoc_text", "read_text_file", "split_text"]


def pydoc_text() -> str:
    """The Python documentation topics as one string, in a fixed (sorted) order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text corpus, refusing empty or binary files with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"corpus file is empty: {path}")
    if b"\x00" in raw[:65536]:
        raise ValueError(f"corpus file looks binary (NUL bytes): {path}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"corpus file is not UTF-8 text: {path} ({exc})") from None


@dataclass(frozen=True)
class Splits:
    """Contiguous train/valid/test splits of a corpus (90/5/5 by default)."""

    train: str
    valid: str
    test: str


def split_text(text: str, valid: float = 0.05, test: float = 0.05) -> Splits:
    """Split ``text`` into contiguous train, valid and test parts."""
    n = len(text)
    n_test = int(n * test)
    n_valid = int(n * valid)
    n_train = n - n_valid - n_test
    return Splits(text[:n_train], text[n_train : n_train + n_valid], text[n_train + n_valid :])


class CharVocab:
    """Character vocabulary; index 0 is reserved for characters the vocabulary does not know."""

    UNK = "\x00"

    def __init__(self, chars: str):
        if not chars or chars[0] != self.UNK:
            chars = self.UNK + "".join(c for c in chars if c != self.UNK)
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        """The sorted set of characters of ``text`` (plus the unknown-character slot)."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Characters to int64 ids; unknown characters map to 0."""
        get = self._index.get
        return torch.tensor([get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())
