"""Mask quality: kept magnitude against the optimum (Hubara et al., arXiv 2102.08124, section 3).

The optimal transposable N:M mask maximises the sum of kept |w| in every M x M tile; the quality
of any other mask (greedy, sinkhorn, a mask of another pattern) is its kept magnitude divided by
the optimum's, per tile and per matrix. Ratios of tiles whose optimum is 0 are defined as 1.
"""

from __future__ import annotations

import torch

from ._checks import check_weight
from .tiles import to_tiles

__all__ = ["kept_magnitude", "tile_kept_magnitude", "kept_magnitude_ratio", "tile_kept_magnitude_ratio"]


def _check_mask(mask: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected the weight's shape {tuple(weight.shape)}")


def kept_magnitude(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum of |w| over the kept entries (float64)."""
    check_weight(weight)
    _check_mask(mask, weight, "mask")
    return float((weight.detach().abs().double() * mask.to(weight.device, torch.bool)).sum())


def tile_kept_magnitude(weight: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """Kept |w| of every M x M tile (zero-padded edges), shape (R, C), float64."""
    check_weight(weight)
    _check_mask(mask, weight, "mask")
    kept = weight.detach().abs().double() * mask.to(weight.device, torch.bool)
    tiles, grid = to_tiles(kept, m)  # (T, M, M)
    return tiles.sum(dim=(1, 2)).reshape(grid)  # (R, C)


def kept_magnitude_ratio(weight: torch.Tensor, mask: torch.Tensor, optimal: torch.Tensor) -> float:
    """Kept |w| of ``mask`` over that of ``optimal`` (e.g. the exact transposable mask); 1.0 if both are 0."""
    best = kept_magnitude(weight, optimal)
    got = kept_magnitude(weight, mask)
    return 1.0 if best == 0 else got / best


def tile_kept_magnitude_ratio(weight: torch.Tensor, mask: torch.Tensor, optimal: torch.Tensor, m: int) -> torch.Tensor:
    """Per-tile kept-magnitude ratio of ``mask`` against ``optimal``, shape (R, C); 1 where the optimum is 0."""
    best = tile_kept_magnitude(weight, optimal, m)
    got = tile_kept_magnitude(weight, mask, m)
    return torch.where(best > 0, got / torch.where(best > 0, best, torch.ones_like(best)), torch.ones_like(best))
