"""Helpers for tests that receive artifacts as a stranger would send them: copy, then tamper."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PRUNE = {"version": 1, "passes": [{"pass": "unstructured_prune", "targets": ["rnn"], "sparsity": 0.5}]}


def make_builtin_artifact(out: Path) -> Path:
    """An artifact of the built-in LM (its architecture is rebuilt from data: a name and a config)."""
    import compressor
    from compressor.recipe import parse_recipe

    spec = compressor.load_model("lstm-lm")
    spec.evaluate = None  # perplexity on the whole test split is not what these tests check
    compressor.Pipeline(parse_recipe(PRUNE)).run(spec, out=out, console=Console(file=io.StringIO()))
    return out


def copy_artifact(src: Path, tmp_path: Path, name: str = "received") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def read_metadata_raw(directory: Path) -> dict:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as fh:
        return json.loads(fh.metadata()["compressor"])


def write_metadata_raw(directory: Path, meta: object) -> None:
    path = directory / "model.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"compressor": json.dumps(meta)})


def rewrite_metadata(directory: Path, change) -> None:
    """Edit an artifact's metadata record in place, as someone crafting an artifact would."""
    meta = read_metadata_raw(directory)
    change(meta)
    write_metadata_raw(directory, meta)


def same_format(a, b):
    """Two kernel formats field for field (tensors equal with their dtypes, sizes equal)."""
    assert type(a) is type(b)
    for key, value in vars(a).items():
        other = getattr(b, key)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other) and value.dtype == other.dtype, key
        else:
            assert value == other, key
