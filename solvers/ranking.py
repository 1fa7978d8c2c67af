"""Ranking across several tensors at once: one global top-k over many layers' scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .topk import topk_mask

__all__ = ["global_topk_masks"]


def global_topk_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Keep the ``k`` largest entries over all ``scores`` together; one mask per input.

    Ties are broken by position in the concatenation (earlier tensor, lower index first).
    """
    if not scores:
        return []
    flat = torch.cat([s.reshape(-1).to(torch.float64) for s in scores])
    keep = topk_mask(flat, k)
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out
