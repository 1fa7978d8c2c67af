"""Compression passes, one file per pass, each registered by its recipe name.

Import through ``compressor.passes``. The pass modules are imported lazily (on the first
registry lookup) so that importing the package stays cheap: every module of this folder whose
name does not start with ``_`` (helpers: ``_allocation``, ``_magnitude``, ...) is a pass module,
registered by its ``@register_pass`` decorator; a new pass is a new file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import (ALL_KINDS, LayerUpdate, PassConfig, PassResult, PassSpec, available_passes, get_pass,
                       register_pass)

__all__ = ["ALL_KINDS", "LayerUpdate", "PassConfig", "PassResult", "PassSpec", "available_passes", "get_pass", "register_pass"]

_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        # every public module of this folder is a pass module: its @register_pass decorator is the
        # one registration (there is no list to keep beside it)
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
            if not info.name.startswith("_") and info.name != "registry":
                importlib.import_module(f"{__name__}.{info.name}")
