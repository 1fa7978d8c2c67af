"""Module replacements: sparse kernel modules swapped in for dense ones, recorded and replayed.

A replacement is a small JSON-able record ``{"module": path, "kind": ..., "options": {...}}``.
Artifacts always store the dense (masked) weights and the masks; :func:`compressor.load`
rebuilds the dense model and replays the records with the kernels' deterministic
``from_dense``, so the file format does not depend on which kernels were installed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .kernels import BlockSparseLinear, NMLinear, SparseGRU, SparseLSTM

__all__ = ["REPLACEMENT_KINDS", "build_replacement", "set_module", "densify", "dense_weight", "replay"]

REPLACEMENT_KINDS = ("block_sparse_linear", "nm_linear", "sparse_lstm", "sparse_gru")
_SPARSE_RNN = (SparseLSTM, SparseGRU)


def build_replacement(module: nn.Module, kind: str, masks: dict[str, torch.Tensor], options: dict) -> nn.Module:
    """The sparse module for dense ``module`` whose weights hold the masked values.

    ``masks`` maps the module's own parameter names (``weight``, ``weight_hh_l0``) to bool masks.
    """
    if kind == "block_sparse_linear":
        return BlockSparseLinear.from_dense(module, masks["weight"], tuple(options["block"]), options.get("layout", "auto"))
    if kind == "nm_linear":
        return NMLinear.from_dense(module, masks["weight"], options["n"], options["m"])
    if kind in ("sparse_lstm", "sparse_gru"):
        cls = SparseLSTM if kind == "sparse_lstm" else SparseGRU
        return cls.from_dense(module, masks, tuple(options["block"]), options.get("layout", "auto"))
    raise ValueError(f"unknown replacement kind {kind!r}; known: {', '.join(REPLACEMENT_KINDS)}")


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` inside ``model``."""
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, module)


def _dense_equivalent(module: nn.Module) -> nn.Module | None:
    if isinstance(module, (BlockSparseLinear, NMLinear)):
        return module.to_linear()
    if isinstance(module, _SPARSE_RNN):
        return module.to_dense()
    return None


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every sparse kernel module replaced by its dense equivalent."""
    dense = copy.deepcopy(model)
    replaced: list[str] = []
    for path, module in list(dense.named_modules()):
        if any(path.startswith(p + ".") for p in replaced):
            continue  # inside a module already replaced as a whole (SparseLSTM's projections)
        equivalent = _dense_equivalent(module)
        if equivalent is not None and path:
            set_module(dense, path, equivalent)
            replaced.append(path)
    return dense


def dense_weight(model: nn.Module, module_path: str, param_name: str) -> torch.Tensor:
    """The dense (masked) weight ``module_path.param_name``, whether or not the module was swapped."""
    module = model.get_submodule(module_path)
    equivalent = _dense_equivalent(module)
    return getattr(equivalent if equivalent is not None else module, param_name).detach()


def replay(model: nn.Module, records: list[dict], masks: dict[str, torch.Tensor]) -> None:
    """Re-install recorded replacements on a dense model (artifact loading)."""
    for rec in records:
        path = rec["module"]
        prefix = f"{path}."
        own = {k[len(prefix):]: v for k, v in masks.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        set_module(model, path, build_replacement(model.get_submodule(path), rec["kind"], own, rec["options"]))
