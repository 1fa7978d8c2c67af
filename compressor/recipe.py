"""Recipes: YAML files that say which passes to run, on which layers, with which settings.

```yaml
version: 1
model:                  # optional; --model/--checkpoint on the command line override it
  name: lstm-lm         # a built-in name, a factory "file.py:fn" / "pkg.module:fn", or a HF directory
  checkpoint: null      # .safetensors, or a state dict .pt/.bin (loaded with weights_only=True)
  inputs: []            # example input specs for tracing/export, e.g. ["2x32:int64"]
seed: 0
passes:
  - pass: block_prune   # a registered pass (see `compress validate --list`)
    targets: ["re:rnn\\..*"]
    block: [16, 16]
    sparsity: 0.8
export:
  onnx: true            # model.onnx (+ a step graph per LSTM/GRU), verified in ONNX Runtime
```

:func:`load_recipe` validates everything it can without a model: the YAML itself, unknown
keys (with a close-match hint and the recipe path, e.g. ``passes[1].blok``), value types and
ranges of every pass config. Target patterns are checked against the model's layers when
the pipeline starts, before any layer changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import config_to_dict, parse_config
from .errors import RecipeError, short
from .passes import PassConfig, get_pass
from .safe_yaml import MAX_YAML_BYTES, load_yaml

__all__ = ["Recipe", "PassEntry", "ModelSection", "ExportSection", "load_recipe", "parse_recipe", "parse_input_spec", "RECIPE_VERSION"]

RECIPE_VERSION = 1
_TOP_KEYS = ("version", "model", "seed", "passes", "export")
#: the most elements one example input may have (2**26: 256 MiB of float32)
MAX_INPUT_ELEMENTS = 1 << 26
#: seeds are handed to torch, numpy and Python's random: the range all three accept
MAX_SEED = 2**32 - 1
#: the dtypes an example input may have, by the name specs and artifacts spell them (one table for
#: --input, the recipe's model.inputs and the input records artifacts keep)
INPUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
_INPUT_SPEC = re.compile(r"^(\d+(?:x\d+)*)(?::(" + "|".join(INPUT_DTYPES) + r"))?$")


def parse_input_spec(spec: str, path: str = "inputs") -> tuple[tuple[int, ...], str]:
    """'2x32:int64' -> ((2, 32), 'int64'); the dtype defaults to float32."""
    match = _INPUT_SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if not match:
        raise RecipeError(
            path, f"{short(spec)} is not an input spec; expected DIMxDIM[:dtype], e.g. '1x128' or '2x32:int64'"
        )
    shape = tuple(int(d) for d in match.group(1).split("x"))
    if 0 in shape:
        raise RecipeError(path, f"{short(spec)} has a dimension of size 0; every dimension must be at least 1")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise RecipeError(path, f"{short(spec)} has {math.prod(shape):.3g} elements; example inputs are limited to "
                                f"{MAX_INPUT_ELEMENTS:,} (they are allocated in memory)")
    return shape, match.group(2) or "float32"


@dataclass(frozen=True)
class ModelSection:
    """Where the model comes from, when the command line does not say."""

    name: str | None = None
    checkpoint: str | None = None
    inputs: tuple[str, ...] = ()

    def validate(self, path: str) -> None:
        for i, spec in enumerate(self.inputs):
            parse_input_spec(spec, f"{path}.inputs[{i}]")


@dataclass(frozen=True)
class ExportSection:
    """``onnx``: write model.onnx into the artifact (verified in ONNX Runtime); ``step``: also a
    single-step graph per LSTM/GRU; ``tolerance``: largest allowed error relative to the output scale."""

    onnx: bool = False
    step: bool = True
    tolerance: float = 1e-4

    def validate(self, path: str) -> None:
        if not self.tolerance > 0:
            raise RecipeError(f"{path}.tolerance", f"{self.tolerance} is invalid; must be > 0")


@dataclass(frozen=True)
class PassEntry:
    """One step of a recipe: the pass's registered name and its validated config."""

    name: str
    config: PassConfig

    def to_dict(self) -> dict:
        return {"pass": self.name, **config_to_dict(self.config)}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``source`` is the file it came from, if any."""

    passes: tuple[PassEntry, ...]
    version: int = RECIPE_VERSION
    model: ModelSection = field(default_factory=ModelSection)
    seed: int = 0
    source: str | None = None
    export: ExportSection = field(default_factory=ExportSection)

    def to_dict(self) -> dict:
        """The resolved recipe: every default filled in (written as recipe.resolved.yaml)."""
        return {
            "version": self.version,
            "model": config_to_dict(self.model),
            "seed": self.seed,
            "passes": [p.to_dict() for p in self.passes],
            "export": config_to_dict(self.export),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_recipe(data: Any, source: str | None = None) -> Recipe:
    """Validate recipe data (already parsed from YAML)."""
    from .config import close_match_hint
    from .targeting import compile_pattern

    if not isinstance(data, dict):
        raise RecipeError("", f"a recipe must be a mapping with 'version' and 'passes', got {type(data).__name__}")
    for key in data:
        if key not in _TOP_KEYS:
            raise RecipeError(str(key), f"unknown key{close_match_hint(str(key), _TOP_KEYS)}; allowed: {', '.join(_TOP_KEYS)}")
    if "version" not in data:
        raise RecipeError("version", f"missing; this toolkit reads recipe version {RECIPE_VERSION}")
    if data["version"] != RECIPE_VERSION:
        raise RecipeError("version", f"{short(data['version'])} is not supported; expected {RECIPE_VERSION}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeError("seed", f"expected an integer, got {short(seed)}")
    if not 0 <= seed <= MAX_SEED:
        raise RecipeError("seed", f"{short(seed)} is outside the allowed range [0, {MAX_SEED}]")
    model = parse_config(ModelSection, data.get("model"), "model")
    raw_passes = data.get("passes")
    if not isinstance(raw_passes, list) or not raw_passes:
        raise RecipeError("passes", "expected a non-empty list of passes")
    entries = []
    for i, raw in enumerate(raw_passes):
        path = f"passes[{i}]"
        if not isinstance(raw, dict):
            raise RecipeError(path, f"expected a mapping with a 'pass' key, got {short(raw)}")
        if "pass" not in raw:
            raise RecipeError(f"{path}.pass", "missing: every step names its pass, e.g. 'pass: block_prune'")
        spec = get_pass(raw["pass"], f"{path}.pass")
        config = parse_config(spec.config_cls, raw, path, skip=("pass",))
        for key in ("targets", "ignore"):  # a bad 're:' pattern fails here, before any model loads
            for j, pattern in enumerate(getattr(config, key, ())):
                compile_pattern(pattern, f"{path}.{key}[{j}]")
        entries.append(PassEntry(spec.name, config))
    export = parse_config(ExportSection, data.get("export"), "export")
    return Recipe(tuple(entries), RECIPE_VERSION, model, seed, source, export)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises RecipeError or FileNotFoundError.

    The file is untrusted input: it is size-limited, and read as plain YAML data with alias
    expansion bounded and duplicate keys refused (:mod:`compressor.safe_yaml`)."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError("", "is a directory; name a recipe file (.yaml)", file=str(path))
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise RecipeError("", f"larger than {MAX_YAML_BYTES // 1024} KiB; a recipe is a short file", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError("", "not UTF-8 text", file=str(path)) from None
    data = load_yaml(text, str(path))
    try:
        return parse_recipe(data, str(path))
    except RecipeError as exc:
        raise RecipeError(exc.path, exc.message, file=str(path)) from None
