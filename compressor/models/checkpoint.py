"""Saving and loading the built-in models' shipped checkpoints (safetensors plus JSON metadata).

A checkpoint holds the model's ``state_dict`` and three metadata strings: ``config`` (the model's
config dataclass as JSON), ``vocab`` (the character vocabulary) and ``trained`` (how it was trained
and its validation figure). ``scripts/train_builtin.py`` writes them; nothing at run or test time
trains.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from ..corpus import CharVocab

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(out: Path, model: nn.Module, config, vocab: CharVocab, trained: dict) -> dict:
    """Write ``model`` to ``out`` atomically (a temporary file, then a rename); returns the metadata."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(asdict(config)), "vocab": json.dumps(vocab.chars), "trained": json.dumps(trained)}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(out)
    return meta


def load_checkpoint(path: Path, build, config_cls, name: str) -> tuple[nn.Module, CharVocab]:
    """The checkpoint at ``path`` as ``build(config_cls(**config))`` in eval mode, plus its vocabulary.

    ``name`` is the built-in model's name, for the message when the file is missing.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"built-in checkpoint missing: {path}; train it with "
                                f"`python scripts/train_builtin.py {name}`")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    model = build(config_cls(**json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, CharVocab(json.loads(meta["vocab"]))
