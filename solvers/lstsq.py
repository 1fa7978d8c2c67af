"""Least-squares weights under a fixed mask: the exact layer-wise reconstruction.

For a layer ``y = W x``, calibration inputs ``X`` (rows: positions) and a mask ``S`` (True = kept),
each output row ``j`` gets the kept weights ``w'`` (zero where ``S_j`` is False) minimising

    ||X w_j - X w'||^2 + lambda ||w_j - w'||^2

where ``w_j`` is the original row and ``lambda = damping * mean(diag X^T X)`` a ridge towards the
original values that keeps every system positive definite. Only the Gram matrix ``G = X^T X`` is
needed: the kept columns ``K`` of a row solve ``(G_KK + lambda I) w'_K = ((G + lambda I) w_j)_K``.

Two solvers, one answer:

- ``cholesky``: rows with the same number of kept weights are factorised together (batched
  Cholesky in float64). Exact, but each row costs ``k^3 / 3``: 384 rows keeping 768 of 1536
  inputs (a transformer's down-projection at 4:8) took 10.4 s on one core.
- ``cg``: conjugate gradients on every row at once. Each iteration is one product of the
  (rows x in) search directions with ``G``, so it runs as a GEMM on every thread. The
  preconditioner of row ``j`` is ``((G + lambda I)^-1)_KK``, the kept block of the inverse of the
  whole damped Gram matrix (one Cholesky, shared by all rows): far closer to ``(G_KK)^-1`` than its
  diagonal (82 iterations instead of 306 on that down-projection, 2.4 s). Rows stop at a relative
  residual ``tol``; the true residual is checked at the end and every row that missed it (or is
  not finite) is solved again by ``cholesky``. Iterates in the weight's precision (float32 for
  float32 weights): at the float32 ``tol`` of 1e-4 the layer's relative output error is within 6e-8
  of the Cholesky solution's (0.033320117 against 0.033320116, 0.038505006 against 0.038505004 on
  two all-MiniLM-L6-v2 down-projections at transposable 4:8, ridge 1e-4) in 20-25% less time than at
  1e-5 (equal to 9 digits) and about a third less than at 1e-6; float64 weights iterate in float64
  to 1e-12.

``auto`` (the default) takes ``cg`` from 256 inputs on, where the per-row factorisations dominate.
Conjugate gradients get an iteration budget worth the Cholesky work they replace (a fixed function
of the shapes, so results do not depend on timing) and stop early when the residual's decay says
they will not make it (a Gram matrix from fewer calibration rows than inputs: 512 rows for 1024
inputs converged too slowly to win); the rows not done then go to Cholesky. The prediction uses the
running minimum of the residual from 40 iterations on: from 20 on, it took the non-monotone
residuals of two MiniLM down-projections for a stall and sent every row to Cholesky (9 s each
instead of 3 s).

Pure tensor math: no model access.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_prior, check_weight
from .greedy import single_thread

__all__ = ["masked_lstsq", "SingularGramError", "LSTSQ_METHODS"]

#: ``method`` values of :func:`masked_lstsq`.
LSTSQ_METHODS = ("auto", "cg", "cholesky")
#: ``auto`` uses conjugate gradients from this many inputs on.
CG_MIN_INPUTS = 256


class SingularGramError(ValueError):
    """A row's kept-column system is not positive definite (no damping and too few calibration rows)."""


def masked_lstsq(gram: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, damping: float, *,
                 method: str = "auto", tol: float | None = None, max_iter: int = 500) -> torch.Tensor:
    """The kept weights of every row of ``weight`` (out x in) minimising the output error (module
    docstring) from ``gram`` = X^T X (in x in, any scale). Zero where ``mask`` is False; the
    weight's dtype. ``method``: ``cholesky`` (float64, exact), ``cg`` (conjugate gradients to a
    relative residual ``tol`` in at most ``max_iter`` iterations, fewer when the residual's decay
    says they will not get there, none below 20; rows whose true residual then exceeds ``10 * tol``
    are solved by Cholesky) or ``auto`` (``cg`` from 256 inputs on, with an iteration budget worth
    the Cholesky work it replaces). ``tol`` defaults to 1e-4 for float32 weights
    and 1e-12 for float64 ones.
    Raises :class:`SingularGramError` when a system cannot be factorised."""
    check_weight(weight)
    check_prior(mask, weight, "mask")
    if method not in LSTSQ_METHODS:
        raise ValueError(f"masked_lstsq: method {method!r} is not one of {', '.join(LSTSQ_METHODS)}")
    gram = gram.double().clone()
    gram += damping * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                          device=gram.device)
    mask = mask.to(torch.bool)
    if tol is None:
        tol = 1e-12 if weight.dtype == torch.float64 else 1e-4
    if method == "cg" or (method == "auto" and gram.shape[0] >= CG_MIN_INPUTS):
        budget = max_iter if method == "cg" else _iteration_budget(gram, mask, max_iter)
        out, missed = _conjugate_gradients(gram, weight, mask, tol, budget)
        if out is not None:
            if bool(missed.any()):
                rows = missed.nonzero().flatten()
                out[rows] = _cholesky_rows(gram, weight[rows], mask[rows]).to(out.dtype)
            return out.to(weight.dtype)
    return _cholesky_rows(gram, weight, mask).to(weight.dtype)


def _cholesky_rows(gram: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float64 solutions of every row's kept-column system (``gram`` already damped), rows with the
    same number of kept weights factorised together."""
    rhs_full = (gram @ weight.double().T).T  # (out, in): (G + lambda I) w_j for every row
    out = torch.zeros_like(weight, dtype=torch.float64)
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
                                            "(raise damping)")
                out[r[:, None], i] = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    return out


#: Iterations over which conjugate gradients measure their residual's decay rate (from twice as
#: many on) to predict whether they finish within the budget.
RATE_WINDOW = 20

#: How many times more floating-point work per second one conjugate-gradient iteration (two GEMMs)
#: does than the batched per-row Cholesky factorisations: measured 5.6 GFLOP/s for 384 float64
#: factorisations of 768 x 768 (one thread) against 60 GFLOP/s one-thread and 125 GFLOP/s
#: two-thread float32 GEMMs of 384 x 1536 x 1536 (2-core AVX2 machine, torch 2.13.0). The lower
#: figure is used, so the budget errs towards Cholesky.
GEMM_OVER_CHOLESKY = 10


def _iteration_budget(gram: torch.Tensor, mask: torch.Tensor, max_iter: int) -> int:
    """Conjugate-gradient iterations that cost about as much as solving every row by Cholesky
    (``k^3 / 3`` per row keeping ``k``) at :data:`GEMM_OVER_CHOLESKY`; at most ``max_iter``. A
    fixed function of the shapes and the mask, so a run's result does not depend on timing."""
    k = mask.sum(1).double()
    cholesky_work = float((k.pow(3) / 3).sum())
    iteration_work = 4.0 * mask.shape[0] * gram.shape[0] ** 2 / GEMM_OVER_CHOLESKY
    return min(max_iter, int(cholesky_work / max(iteration_work, 1.0)))


def _gives_up(best: list[float], tol: float, budget: int) -> bool:
    """Whether conjugate gradients should stop after ``len(best)`` iterations (``best``: the lowest
    worst-row residual so far, per iteration): checked every 10 iterations from ``2 * RATE_WINDOW`` on,
    true when the decay over the last :data:`RATE_WINDOW` iterations has stalled or predicts ``tol``
    after ``budget``."""
    it = len(best) - 1
    if it < 2 * RATE_WINDOW or it % 10:
        return False
    rate = (math.log(max(best[-1], 1e-300)) - math.log(max(best[-1 - RATE_WINDOW], 1e-300))) / RATE_WINDOW
    return rate >= 0 or it + math.log(tol / best[-1]) / rate > budget


def _conjugate_gradients(gram: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, tol: float, budget: int):
    """``(solution, missed)``: preconditioned conjugate gradients on all rows at once (module
    docstring), ``missed`` the rows whose true relative residual is above ``10 * tol`` (or not finite).
    ``(None, None)`` where the damped Gram matrix itself is not positive definite (the per-row
    systems may still be: the caller falls back to Cholesky), or where the budget is under 20
    iterations. At most ``budget`` iterations (``auto``: :func:`_iteration_budget`), and fewer
    when the residual's decay rate predicts more than that: a rank-deficient Gram matrix (fewer
    calibration rows than inputs) converges slowly, and the rows left go to Cholesky."""
    if budget < 20:
        return None, None
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return None, None
    dtype = torch.promote_types(weight.dtype, torch.float32)
    precond = torch.cholesky_inverse(chol).to(dtype)  # (G + lambda I)^-1, its kept block per row
    g = gram.to(dtype)
    m = mask.to(dtype)
    w = weight.to(dtype)
    b = m * (w @ g)  # ((G + lambda I) w_j)_K, zero elsewhere
    b_norm = b.norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
    x = m * w  # start from the original kept weights
    r = b - m * (x @ g)
    z = m * (r @ precond)
    p = z.clone()
    rz = (r * z).sum(1)
    # the worst row's relative residual, lowest so far, every iteration: CG residuals are not monotone
    # (a down-projection's rose from 5.5e-2 to 1.1e-1 and back within ten iterations), so the decay rate
    # is taken on the running minimum over the last RATE_WINDOW iterations
    best: list[float] = []
    for it in range(budget):
        worst = float((r.norm(dim=1) / b_norm).max())
        if worst <= tol:
            break
        best.append(min(worst, best[-1]) if best else worst)
        if _gives_up(best, tol, budget):
            break  # would not finish within the budget: what is left goes to Cholesky
        q = m * (p @ g)
        pq = (p * q).sum(1)
        alpha = torch.where(pq > 0, rz / pq.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(pq))
        x += alpha[:, None] * p
        r -= alpha[:, None] * q
        z = m * (r @ precond)
        rz_new = (r * z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(rz))
        p = z + beta[:, None] * p
        rz = rz_new
    true_residual = (b - m * (x @ g)).norm(dim=1) / b_norm  # the recurrence drifts in float32
    missed = ~(true_residual <= 10 * tol) | ~torch.isfinite(x).all(1)
    return x, missed
