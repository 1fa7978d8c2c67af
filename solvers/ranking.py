"""Ranking across several tensors at once: one global top-k over many layers' scores, or one
budget of balanced block rows shared by many layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .topk import topk_mask

__all__ = ["global_topk_masks", "balanced_block_counts"]


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


def balanced_block_counts(scores: Sequence[torch.Tensor], budget: int, caps: Sequence[int] | None = None,
                          at_least: int = 1) -> list[int]:
    """Blocks to keep in every block row of each layer, all layers under one budget (balanced, global).

    ``scores[i]`` is layer i's (R_i, C_i) block scores; layer i keeps k_i blocks in each of its R_i
    block rows, R_i * k_i blocks in all, and the sum over layers stays within ``budget`` blocks
    (unless ``at_least`` per layer already exceeds it). The k_i are chosen greedily: raising layer i
    from k to k + 1 is worth the mean over its rows of their (k+1)-th largest score and costs R_i
    blocks; raises are taken by decreasing worth while they fit, and a layer whose next raise does
    not fit takes no more. The worths fall with k in every layer, so when all R_i are equal this is
    the exact optimum of the kept score. ``caps[i]`` bounds k_i (the blocks a row keeps now, so
    that a tightening schedule never regrows).
    """
    caps = [s.shape[1] for s in scores] if caps is None else [min(int(c), s.shape[1]) for c, s in zip(caps, scores)]
    counts = [min(at_least, c) for c in caps]
    left = budget - sum(s.shape[0] * k for s, k in zip(scores, counts))
    worth, layer = [], []
    for i, (s, k) in enumerate(zip(scores, counts)):
        col_means = torch.sort(s.to(torch.float64), dim=1, descending=True).values.mean(dim=0)
        worth.append(col_means[k : caps[i]])
        layer.append(torch.full((caps[i] - k,), i))
    if not worth:
        return counts
    order = torch.argsort(torch.cat(worth), descending=True, stable=True)
    layer_of = torch.cat(layer)[order].tolist()
    closed = set()
    for i in layer_of:
        if i in closed:
            continue
        cost = scores[i].shape[0]
        if cost > left:
            closed.add(i)
            continue
        counts[i] += 1
        left -= cost
    return counts
