"""Least squares under a fixed mask: conjugate gradients against per-row Cholesky and torch's lstsq."""

from __future__ import annotations

import pytest
import torch

from compressor.passes.nm_convert import relative_error
from compressor.solvers.sparsegpt import hessian, output_error
from compressor.solvers.lstsq import (GEMM_OVER_CHOLESKY, SingularGramError, _conjugate_gradients, _gives_up,
                                      _iteration_budget, masked_lstsq)


def _problem(rows=2000, cols=320, out=40, seed=0):
    """Inputs with correlated columns and uneven norms (one column 30x the others, as transformer
    activations have), a float32 weight, and a mask with varied kept counts: one empty row, one
    full row, the rest about half."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) @ torch.randn(cols, cols, generator=gen) / cols**0.5
    x = (x + 0.2 * torch.randn(rows, cols, generator=gen)) * (torch.rand(cols, generator=gen) * 3 + 0.1)
    x[:, 7] *= 30
    w = torch.randn(out, cols, generator=gen)
    mask = torch.rand(out, cols, generator=gen) > 0.5
    mask[0] = False
    mask[1] = True
    return x, w, mask


def _gram(x):
    """X^T X in float64, unnormalised (the ridge references below use the same scale)."""
    x = x.double()
    return x.T @ x


def _objective(gram, w_ref, w, damping):
    """The minimised quantity, summed over rows: ||X (w_ref - w)||^2 + lambda ||w_ref - w||^2."""
    d = (w_ref - w).double()
    lam = damping * gram.diagonal().mean()
    return float(((d @ gram) * d).sum() + lam * d.pow(2).sum())


def test_conjugate_gradients_reach_the_cholesky_optimum():
    x, w, mask = _problem()
    gram = _gram(x)
    exact = masked_lstsq(gram, w, mask, 0.01, method="cholesky")
    cg = masked_lstsq(gram, w, mask, 0.01, method="cg")
    assert cg.dtype == w.dtype and bool((cg[~mask] == 0).all())
    assert torch.equal(cg[0], torch.zeros_like(cg[0]))
    f_exact, f_cg = _objective(gram, w, exact, 0.01), _objective(gram, w, cg, 0.01)
    assert f_cg <= f_exact * (1 + 1e-6)
    assert f_exact < _objective(gram, w, w * mask, 0.01) * 0.9  # the fit matters: not a trivial optimum
    torch.testing.assert_close(cg, exact, rtol=0, atol=2e-3 * float(exact.abs().max()))
    # the independent reference for a few rows: torch's lstsq on the stacked ridge system
    lam = 0.01 * float(gram.diagonal().mean())
    xd = x.double()
    for r in (1, 5, 17):
        k = mask[r]
        a = torch.cat([xd[:, k], lam**0.5 * torch.eye(int(k.sum()), dtype=xd.dtype)])
        target = torch.cat([xd @ w[r].double(), lam**0.5 * w[r, k].double()])
        ref = torch.linalg.lstsq(a, target).solution
        torch.testing.assert_close(cg[r, k].double(), ref, rtol=0, atol=2e-3 * float(ref.abs().max()))


def test_rows_conjugate_gradients_do_not_finish_are_solved_by_cholesky():
    """A tolerance float32 cannot reach: the iterations stop (their decay rate says they will not
    make it) and every row gets Cholesky's answer."""
    x, w, mask = _problem(seed=1)
    gram = _gram(x)
    damped = gram + 0.01 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    _, missed = _conjugate_gradients(damped, w, mask, 1e-30, 500)
    assert bool(missed[2:].all())
    assert not bool(missed[:2].any())  # the empty row and the full row start at their answer: residual 0
    exact = masked_lstsq(gram, w, mask, 0.01, method="cholesky")
    fallback = masked_lstsq(gram, w, mask, 0.01, method="cg", tol=1e-30)
    torch.testing.assert_close(fallback, exact, rtol=1e-6, atol=1e-6)


def test_conjugate_gradients_converge_on_every_row_of_a_well_posed_problem():
    """The answers above are conjugate gradients' own, not the fallback's; and ``auto``'s budget is
    a fixed function of the shapes: Cholesky-sized work, so a Gram from fewer rows than inputs,
    whose iterations decay slowly, stops early rather than run them all."""
    x, w, mask = _problem(seed=4)
    gram = _gram(x)
    damped = gram + 0.01 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    solution, missed = _conjugate_gradients(damped, w, mask, 1e-6, 500)
    assert not bool(missed.any())
    exact = masked_lstsq(gram, w, mask, 0.01, method="cholesky")
    assert _objective(gram, w, solution, 0.01) <= _objective(gram, w, exact, 0.01) * (1 + 1e-6)
    k = mask.sum(1).double()
    expected = int(float((k.pow(3) / 3).sum()) / (4.0 * 40 * 320**2 / GEMM_OVER_CHOLESKY))
    assert _iteration_budget(gram, mask, 500) == min(500, expected)


def test_auto_uses_cholesky_below_256_inputs_and_both_refuse_a_singular_system():
    x, w, mask = _problem(rows=100, cols=120, out=8, seed=2)  # 100 rows: Gram of rank 100 < 120
    gram = _gram(x)
    assert torch.equal(masked_lstsq(gram, w, mask, 0.01), masked_lstsq(gram, w, mask, 0.01, method="cholesky"))
    for method in ("cg", "cholesky"):
        with pytest.raises(SingularGramError, match="singular for 1 rows"):
            masked_lstsq(gram, w, mask, 0.0, method=method)  # row 1 keeps all 120 columns
    with pytest.raises(ValueError, match="method 'lu' is not one of auto, cg, cholesky"):
        masked_lstsq(gram, w, mask, 0.01, method="lu")


def test_the_gram_error_equals_the_error_on_the_inputs():
    x, w, mask = _problem(rows=500, cols=64, out=16, seed=3)
    x, w = x.double(), w.double()
    pruned = w * mask
    assert output_error(hessian(x), w, pruned) == pytest.approx(relative_error(x, w, pruned), rel=1e-9)
    assert output_error(hessian(x), w, w) == 0.0


#: The worst row's relative residual over the first 60 iterations of conjugate gradients on a real
#: all-MiniLM-L6-v2 down-projection (384 x 1536, transposable 4:8, ridge 1e-4, float32): it rises and
#: falls (0.055 -> 0.11 -> 0.055 around iteration 15) and reached 1e-5 at iteration 100 of its budget of 160.
MINILM_DOWN_PROJECTION = [
    3.1, 8.1e-1, 6.8e-1, 5.1e-1, 4.0e-1, 3.0e-1, 2.4e-1, 2.9e-1, 1.9e-1, 9.8e-2, 8.0e-2, 7.5e-2, 1.1e-1, 1.1e-1,
    1.1e-1, 9.9e-2, 5.5e-2, 7.3e-2, 5.8e-2, 6.6e-2, 5.1e-2, 3.6e-2, 4.7e-2, 2.8e-2, 2.8e-2, 3.1e-2, 2.3e-2, 3.1e-2,
    1.4e-2, 1.5e-2, 1.7e-2, 1.4e-2, 1.2e-2, 9.6e-3, 8.9e-3, 9.6e-3, 6.8e-3, 7.1e-3, 7.0e-3, 6.9e-3, 5.9e-3, 4.7e-3,
    4.4e-3, 3.9e-3, 3.6e-3, 2.5e-3, 2.7e-3, 2.6e-3, 1.5e-3, 2.3e-3, 1.3e-3, 1.1e-3, 1.7e-3, 1.4e-3, 8.1e-4, 1.0e-3,
    9.1e-4, 9.4e-4, 7.8e-4, 6.0e-4,
]


def _running_min(history):
    return [min(history[:i + 1]) for i in range(len(history))]


def test_conjugate_gradients_keep_going_through_a_bump_and_stop_on_a_stall():
    """The give-up rule reads the residual's running minimum over 20 iterations: the real
    down-projection above, which converged within its budget, is never given up (a rate read at
    iteration 20 over the 10 before it predicted 186 iterations and sent every row to Cholesky);
    a residual that stalls, or decays too slowly for the budget, is."""
    real = _running_min(MINILM_DOWN_PROJECTION)
    assert not any(_gives_up(real[:k], 1e-5, 160) for k in range(1, len(real) + 1))
    stalled = _running_min([1.0 / (i + 1) for i in range(20)] + [0.05] * 21)
    assert _gives_up(stalled, 1e-5, 500)
    slow = _running_min([0.99 ** i for i in range(41)])  # 1e-5 after about 1,150 iterations
    assert _gives_up(slow, 1e-5, 500) and not _gives_up(slow, 1e-5, 2000)
    assert not _gives_up(stalled[:40], 1e-5, 500)  # checked from iteration 40 on, every 10
