"""Batched entropy-regularised transport for transposable N:M, in the spirit of TSENOR
(Meng, Makni, Mazumder 2025, arXiv 2505.23949; docs/methods.md section 3).

Every tile's LP relaxation, maximise <S, P> over 0 <= P <= 1 with row and column sums N, gets a
binary (Fermi-Dirac) entropy term ``tau * sum(-P log P - (1-P) log(1-P))``; its optimum has the
form ``P_ij = sigmoid((S_ij + f_i + g_j) / tau)``, so the capacity P <= 1 holds by construction.
The row and column potentials f, g are fitted by alternating Newton steps, Sinkhorn-style, on all
tiles at once in torch (so it runs unchanged on a GPU). The fractional plan is then rounded with
the greedy of ``greedy.py`` (visit by descending plan value) and repaired with the same augmenting
swaps, scored by the real |w|: the result is always exactly transposable N:M but only
approximately optimal. Prior and padding preferences act through the rounding order (the plan
value is added to the lexicographic bonuses of ``tiles.bonus_weights``).
"""

from __future__ import annotations

import torch

from .greedy import greedy_fill, repair_swaps, row_col_counts
from .tiles import TileProblem, bonus_weights, float_scores, normalised

__all__ = ["transport_plan", "sinkhorn_tiles"]


def transport_plan(scores: torch.Tensor, n: int, tau: float = 0.05, iters: int = 30) -> torch.Tensor:
    """Fractional plan (T, M, M) in [0, 1] with row and column sums close to ``n``.

    ``scores`` should lie in about [0, 1] per tile; smaller ``tau`` is closer to the LP optimum
    but needs more iterations.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    T, M, _ = scores.shape
    s = scores.to(torch.float32) / tau  # (T, M, M)
    f = torch.zeros(T, M, 1, dtype=s.dtype, device=s.device)
    g = torch.zeros(T, 1, M, dtype=s.dtype, device=s.device)
    # start from potentials that centre each row around its n-th largest score
    f -= torch.topk(s, n, dim=2).values[..., -1:]
    for _ in range(iters):
        p = torch.sigmoid(s + f + g)
        f -= (p.sum(2, keepdim=True) - n) / ((p * (1 - p)).sum(2, keepdim=True) + 1e-6)
        p = torch.sigmoid(s + f + g)
        g -= (p.sum(1, keepdim=True) - n) / ((p * (1 - p)).sum(1, keepdim=True) + 1e-6)
    return torch.sigmoid(s + f + g)


def sinkhorn_tiles(problem: TileProblem, tau: float = 0.05, iters: int = 30) -> tuple[torch.Tensor, int]:
    """Transport plan, greedy rounding and swap repair: ((T, M, M) bool, tiles repaired)."""
    n, m = problem.n, problem.m
    plan = transport_plan(normalised(problem.mag), n, tau, iters).to(torch.float64)  # (T, M, M)
    key = plan
    b_prior, b_real = bonus_weights(n, m, 1.0)
    if problem.prior is not None:
        key = key + problem.prior.to(key.dtype) * b_prior
    if problem.real is not None:
        key = key + problem.real.to(key.dtype) * b_real
    keep = greedy_fill(key, n)
    rows, cols = row_col_counts(keep)
    broken = (rows != n).any(1) | (cols != n).any(1)
    if bool(broken.any()):
        keep = repair_swaps(keep, float_scores(problem), n)
    return keep, int(broken.sum())
