"""Masks as ``torch.nn.utils.parametrize`` parametrizations.

During a pipeline a pruned weight is ``original * mask`` with the mask a buffer of the
parametrization, so no optimizer step (momentum included) can regrow a pruned weight: the
gradient of a masked entry is zero and its effective value stays zero whatever ``original``
holds. :func:`finalize` bakes the masks in: it zeroes the pruned entries of the original
``Parameter`` in place and removes the parametrization, which keeps tied weights tied.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

__all__ = ["WeightMask", "set_mask", "get_mask", "original_weight", "iter_masks", "finalize", "split_name"]


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask``; the bool mask is a buffer (saved, moved with the model)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def split_name(name: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight'); 'weight' -> ('', 'weight')."""
    module, _, param = name.rpartition(".")
    return module, param


def _find_mask(module: nn.Module, param: str) -> WeightMask | None:
    if parametrize.is_parametrized(module, param):
        for p in module.parametrizations[param]:
            if isinstance(p, WeightMask):
                return p
    return None


def set_mask(model: nn.Module, name: str, mask: torch.Tensor, *, intersect: bool = True) -> None:
    """Install or update the mask of parameter ``name`` (e.g. ``rnn.weight_hh_l0``).

    With ``intersect`` (the default) a new mask is combined with an existing one, so a later
    pass can only prune more, never regrow what an earlier pass pruned.
    """
    module_path, param = split_name(name)
    module = model.get_submodule(module_path)
    current = getattr(module, param)
    if tuple(mask.shape) != tuple(current.shape):
        raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(current.shape)}")
    mask = mask.to(device=current.device, dtype=torch.bool)
    existing = _find_mask(module, param)
    if existing is not None:
        existing.mask.copy_(existing.mask & mask if intersect else mask)
    else:
        parametrize.register_parametrization(module, param, WeightMask(mask), unsafe=True)


def get_mask(model: nn.Module, name: str) -> torch.Tensor | None:
    """The current mask of parameter ``name``, or None if it is not masked."""
    module_path, param = split_name(name)
    found = _find_mask(model.get_submodule(module_path), param)
    return None if found is None else found.mask


def original_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The unmasked parameter behind ``name`` (the parameter itself if not parametrized)."""
    module_path, param = split_name(name)
    module = model.get_submodule(module_path)
    if parametrize.is_parametrized(module, param):
        return module.parametrizations[param].original
    return getattr(module, param)


def iter_masks(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(parameter name, mask)`` for every masked parameter."""
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for param in list(module.parametrizations.keys()):
                found = _find_mask(module, param)
                if found is not None:
                    yield (f"{path}.{param}" if path else param), found.mask


@torch.no_grad()
def finalize(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bake every mask into its weight and remove the parametrizations.

    Returns the masks by parameter name (for artifacts and reports). The original
    ``Parameter`` objects are kept (zeroed where pruned), so tied weights stay tied.
    """
    masks = {name: mask.clone() for name, mask in iter_masks(model)}
    for name in masks:
        module_path, param = split_name(name)
        module = model.get_submodule(module_path)
        if not parametrize.is_parametrized(module, param):
            continue  # a tied alias already finalized through another module
        original = module.parametrizations[param].original
        original.mul_(masks[name].to(original.dtype))
        parametrize.remove_parametrizations(module, param, leave_parametrized=False)
    return masks
