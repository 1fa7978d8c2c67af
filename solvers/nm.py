"""Plain N:M masks: keep the N largest |w| of every M consecutive weights along the input dimension.

Hubara et al. (arXiv 2102.08124), section 3 of docs/methods.md. A row whose length is not a multiple
of M is treated as if zero-padded to the next multiple: the last, partial group of r < M entries
keeps its min(N, r) largest entries (the padding is never kept). That is what a hardware N:M
format sees after padding the input dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_nm, check_prior, check_weight

__all__ = ["nm_mask", "is_nm"]


def nm_mask(weight: torch.Tensor, n: int, m: int, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean N:M mask of ``weight`` (out_features x in_features); True = kept.

    ``prior``: an optional existing mask (e.g. of an unstructured-sparse model). Entries it
    keeps are preferred; when a group holds fewer than N of them, the largest remaining
    weights fill the group up to N, so the result is always exactly N:M.
    Ties are broken by position (lower index first), so masks are deterministic.
    """
    check_weight(weight)
    check_nm(n, m)
    check_prior(prior, weight)
    rows, cols = weight.shape
    scores = weight.detach().abs().double()
    if prior is not None:
        # Any kept prior entry outranks any non-kept one; magnitude orders within each class.
        scores = scores + prior.to(scores.device, torch.bool).double() * (scores.max() + 1.0)
    pad = (-cols) % m
    if pad:
        scores = F.pad(scores, (0, pad), value=-1.0)  # padding scores below every real |w|
    groups = scores.reshape(rows, -1, m)  # (rows, cols/m, m)
    order = torch.argsort(groups, dim=2, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, order[..., :n], True)
    keep = keep.reshape(rows, -1)[:, :cols]
    return keep.to(weight.device)


def is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True if every full group of M along dim 1 keeps exactly N and a partial tail keeps min(N, r)."""
    rows, cols = mask.shape
    full = cols - cols % m
    if full and not bool((mask[:, :full].reshape(rows, -1, m).sum(-1) == n).all()):
        return False
    if cols % m:
        return bool((mask[:, full:].sum(-1) == min(n, cols % m)).all())
    return True
