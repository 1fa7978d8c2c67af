"""Top-k selection and block scoring: the mask math behind magnitude pruning.

All functions are pure: tensors in, tensors out, no model access. Ties are broken
deterministically (lower flat index wins) so that equal weights give reproducible masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_weight

__all__ = [
    "BLOCK_SCORES",
    "topk_mask",
    "rowwise_topk_mask",
    "block_scores",
    "block_counts",
    "expand_block_mask",
    "reduce_block_mask",
]

BLOCK_SCORES = ("max_abs", "mean_abs", "l2")


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of ``scores`` (any shape).

    Ties are broken by position (earlier flat index is kept first).
    """
    flat = scores.reshape(-1)
    k = int(k)
    if not 0 <= k <= flat.numel():
        raise ValueError(f"k must be in [0, {flat.numel()}], got {k}")
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if k:
        order = torch.argsort(flat, descending=True, stable=True)
        mask[order[:k]] = True
    return mask.reshape(scores.shape)


def rowwise_topk_mask(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the ``k`` largest entries of every row of a 2-D ``scores``; ``k`` is one
    count for every row or a 1-D tensor with one count per row."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D, got shape {tuple(scores.shape)}")
    if isinstance(k, torch.Tensor) and k.dim() == 1:
        if k.numel() != scores.shape[0]:
            raise ValueError(f"k has {k.numel()} per-row counts for {scores.shape[0]} rows")
        if bool((k < 0).any()) or bool((k > scores.shape[1]).any()):
            raise ValueError(f"every per-row k must be in [0, {scores.shape[1]}]")
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        ranked = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < k.to(scores.device).unsqueeze(1)
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, ranked)
    k = int(k)
    if not 0 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [0, {scores.shape[1]}], got {k}")
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        mask.scatter_(1, order[:, :k], True)
    return mask


def _pad_to_blocks(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    bh, bw = block
    rows, cols = weight.shape
    pad_r = (-rows) % bh
    pad_c = (-cols) % bw
    return F.pad(weight, (0, pad_c, 0, pad_r)) if (pad_r or pad_c) else weight


def block_counts(shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Number of real (unpadded) entries in every block of a matrix of ``shape``: (R, C)."""
    rows, cols = shape
    bh, bw = block
    r_sizes = torch.full((math.ceil(rows / bh),), bh)
    c_sizes = torch.full((math.ceil(cols / bw),), bw)
    if rows % bh:
        r_sizes[-1] = rows % bh
    if cols % bw:
        c_sizes[-1] = cols % bw
    return r_sizes[:, None] * c_sizes[None, :]


def block_scores(weight: torch.Tensor, block: tuple[int, int], score: str = "max_abs") -> torch.Tensor:
    """Score every ``bh x bw`` block of ``weight``: returns (ceil(rows/bh), ceil(cols/bw)).

    Edge blocks of a matrix whose size is not a multiple of the block are partial: they are
    scored on their real entries only (zero padding does not change max|w| or the L2 norm;
    mean|w| divides by the real count).
    ``score``: ``max_abs`` (Narang et al.), ``mean_abs`` or ``l2``.
    """
    check_weight(weight)
    if score not in BLOCK_SCORES:
        raise ValueError(f"score must be one of {BLOCK_SCORES}, got {score!r}")
    bh, bw = block
    padded = _pad_to_blocks(weight.detach().abs().float(), block)
    R, C = padded.shape[0] // bh, padded.shape[1] // bw
    tiles = padded.reshape(R, bh, C, bw).permute(0, 2, 1, 3)  # (R, C, bh, bw)
    if score == "max_abs":
        return tiles.amax(dim=(2, 3))
    if score == "l2":
        return tiles.pow(2).sum(dim=(2, 3)).sqrt()
    counts = block_counts(tuple(weight.shape), block).to(padded.device)
    return tiles.sum(dim=(2, 3)) / counts


def expand_block_mask(block_mask: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Expand a (R, C) block mask to an element mask of ``shape`` (edge blocks cropped)."""
    bh, bw = block
    full = block_mask.repeat_interleave(bh, dim=0).repeat_interleave(bw, dim=1)
    return full[: shape[0], : shape[1]].contiguous()


def reduce_block_mask(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`expand_block_mask`: a block is kept if any of its entries is kept."""
    padded = _pad_to_blocks(mask.to(torch.float32), block)
    bh, bw = block
    R, C = padded.shape[0] // bh, padded.shape[1] // bw
    return padded.reshape(R, bh, C, bw).amax(dim=(1, 3)) > 0
