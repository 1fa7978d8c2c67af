"""Least-squares weights under a fixed mask: the exact layer-wise reconstruction.

For a layer ``y = W x``, calibration inputs ``X`` (rows: positions) and a mask ``S`` (True = kept),
each output row ``j`` gets the kept weights ``w'`` (zero where ``S_j`` is False) minimising

    ||X w_j - X w'||^2 + lambda ||w_j - w'||^2

where ``w_j`` is the original row and ``lambda = damping * mean(diag X^T X)`` a ridge towards the
original values that keeps every system positive definite. Only the Gram matrix ``G = X^T X`` is
needed: the kept columns ``K`` of a row solve ``(G_KK + lambda I) w'_K = ((G + lambda I) w_j)_K``.
Rows with the same number of kept weights are solved together by a batched Cholesky factorisation.

Pure tensor math: no model access.
"""

from __future__ import annotations

import torch

from ._checks import check_prior, check_weight
from .greedy import single_thread

__all__ = ["masked_lstsq", "SingularGramError"]


class SingularGramError(ValueError):
    """A row's kept-column system is not positive definite (no damping and too few calibration rows)."""


def masked_lstsq(gram: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, damping: float) -> torch.Tensor:
    """The kept weights of every row of ``weight`` (out x in) minimising the output error (module
    docstring) from ``gram`` = X^T X (in x in, any scale). Zero where ``mask`` is False; the
    weight's dtype; computed in float64.
    Raises :class:`SingularGramError` when a system cannot be factorised."""
    check_weight(weight)
    check_prior(mask, weight, "mask")
    gram = gram.double().clone()
    gram += damping * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                          device=gram.device)
    rhs_full = (gram @ weight.double().T).T  # (out, in): (G + lambda I) w_j for every row
    out = torch.zeros_like(weight, dtype=torch.float64)
    mask = mask.to(torch.bool)
    counts = mask.sum(1)
    # batched factorisations of small systems: with 1 thread 20x faster than with 2 on 1536 systems of
    # 192 x 192, 1.7x on 96 of 768 x 768 (MKL, torch 2.13.0, 2-core machine). (Batched LU,
    # torch.linalg.solve, also returned wrong pivots on the MKL CPU build once the process had changed
    # its thread count: measured with torch 2.13.0; Cholesky does not.)
    with single_thread():
        for k in counts.unique().tolist():
            if k == 0:
                continue
            rows = (counts == k).nonzero().flatten()
            idx = mask[rows].nonzero()[:, 1].reshape(len(rows), k)  # (R, k) kept columns, ascending
            step = max(1, (1 << 24) // (k * k))
            for s in range(0, len(rows), step):
                r, i = rows[s:s + step], idx[s:s + step]
                a = gram[i[:, :, None], i[:, None, :]]  # (R, k, k)
                b = torch.gather(rhs_full[r], 1, i)  # (R, k)
                chol, info = torch.linalg.cholesky_ex(a)
                if bool((info != 0).any()):
                    raise SingularGramError(f"the calibration Gram matrix is singular for {int((info != 0).sum())} rows "
                                            f"(damping={damping})")
                out[r[:, None], i] = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    return out.to(weight.dtype)
