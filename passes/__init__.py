"""Compression passes, one file per pass, each registered by its recipe name.

Import through ``compressor.passes``. The pass modules are imported lazily (on the first
registry lookup) so that importing the package stays cheap.
"""

from __future__ import annotations

import importlib

from .registry import (ALL_KINDS, LayerUpdate, PassConfig, PassResult, PassSpec, available_passes, get_pass,
                       register_pass)

__all__ = ["ALL_KINDS", "LayerUpdate", "PassConfig", "PassResult", "PassSpec", "available_passes", "get_pass", "register_pass"]

#: Modules that register passes. A new pass adds its module here.
PASS_MODULES = (
    "unstructured_prune",
    "block_prune",
    "nm_prune",
    "gradual_block_prune",
    "group_lasso",
    "finetune",
    "nm_convert",
    "sparsegpt",
    "wanda",
    "swap_kernels",
    "dynamic_gate",
)

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in PASS_MODULES:
            importlib.import_module(f"{__name__}.{mod}")
