"""Prior masks (existing zeros) and bad input for the N:M and transposable solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressor.solvers import SOLVER_NAMES, is_transposable_nm, nm_mask, transposable_nm_mask

from .conftest import assert_exact_transposable, runnable


@pytest.mark.parametrize("method", ["exact", "mincostflow"])
def test_exact_prefers_prior_then_magnitude(method, patterns_2_4):
    rng = np.random.default_rng(5)
    w = torch.from_numpy(rng.standard_normal((8, 16)))
    prior = torch.from_numpy(rng.random((8, 16)) < 0.4)
    mask = transposable_nm_mask(w, 2, 4, method=method, prior=prior)
    assert_exact_transposable(mask, 2, 4)
    for i0 in range(0, 8, 4):
        for j0 in range(0, 16, 4):
            vals = w[i0 : i0 + 4, j0 : j0 + 4].abs().numpy()
            pri = prior[i0 : i0 + 4, j0 : j0 + 4].numpy()
            block = mask[i0 : i0 + 4, j0 : j0 + 4].numpy()
            counts = (patterns_2_4 & pri).sum((1, 2))
            assert (block & pri).sum() == counts.max()
            best = (patterns_2_4 * vals)[counts == counts.max()].sum((1, 2)).max()
            assert vals[block].sum() == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("method", runnable(*SOLVER_NAMES))
def test_prior_too_sparse_is_filled_to_exact_nm(method):
    torch.manual_seed(0)
    w = torch.randn(16, 16)
    prior = torch.zeros(16, 16, dtype=torch.bool)
    prior[0, 0] = True  # one prior entry: tiles must be filled with other weights
    if method == "enumerate":
        n, m = 2, 4
    else:
        n, m = 4, 8
    mask = transposable_nm_mask(w, n, m, method=method, prior=prior)
    assert_exact_transposable(mask, n, m)
    assert bool(mask[0, 0])


def test_prior_dense_keeps_prior_entries_only():
    # A prior that is itself transposable 2:4 is returned unchanged by exact solvers, however small its weights.
    base = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    prior = base.repeat(2, 3)
    w = torch.where(prior, torch.full((8, 12), 1e-3), torch.full((8, 12), 5.0))
    for method in ("exact", "mincostflow", "greedy"):
        assert torch.equal(transposable_nm_mask(w, 2, 4, method=method, prior=prior), prior)


def test_nm_mask_prior_and_tail():
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0, 9.0, 0.5, 0.1]])
    prior = torch.tensor([[False, False, True, True, False, False, True]])
    assert nm_mask(w, 2, 4).tolist() == [[True, True, False, False, True, True, False]]
    assert nm_mask(w, 2, 4, prior=prior).tolist() == [[False, False, True, True, True, False, True]]


@pytest.mark.parametrize("m", [2, 3, 16, 32])
def test_nm_mask_matches_per_group_sort(m):
    torch.manual_seed(m)
    w = torch.randn(5, 3 * m + 1)
    n = m // 2
    mask = nm_mask(w, n, m)
    for row in range(5):
        for g0 in range(0, w.shape[1], m):
            vals = w[row, g0 : g0 + m].abs()
            k = min(n, vals.numel())
            keep = set(torch.argsort(vals, descending=True, stable=True)[:k].tolist())
            assert {i for i in range(vals.numel()) if mask[row, g0 + i]} == keep


BAD = [
    (torch.tensor([[float("nan"), 1.0, 2.0, 3.0]]), 2, 4, None, ValueError, "weight"),
    (torch.tensor([[math.inf, 1.0, 2.0, 3.0]]), 2, 4, None, ValueError, "weight"),
    (torch.randn(4, 4), 4, 4, None, ValueError, "n"),
    (torch.randn(4, 4), 0, 4, None, ValueError, "n"),
    (torch.randn(4, 4), 1, 1, None, ValueError, "m"),
    (torch.randn(0, 4), 2, 4, None, ValueError, "weight"),
    (torch.randn(4), 2, 4, None, ValueError, "weight"),
    (torch.randn(2, 4, 4), 2, 4, None, ValueError, "weight"),
    (torch.randn(4, 4), 2, 4, torch.ones(4, 5, dtype=torch.bool), ValueError, "prior"),
    (torch.randn(4, 4), 2, 4, np.ones((4, 4)), TypeError, "prior"),
    (np.ones((4, 4)), 2, 4, None, TypeError, "weight"),
    (torch.ones(4, 4, dtype=torch.int64), 2, 4, None, ValueError, "weight"),
]


@pytest.mark.parametrize("weight,n,m,prior,exc,word", BAD)
@pytest.mark.parametrize("fn", ["nm", "exact", "greedy"])
def test_bad_input_names_the_argument(weight, n, m, prior, exc, word, fn):
    with pytest.raises(exc, match=word):
        if fn == "nm":
            nm_mask(weight, n, m, prior=prior)
        else:
            transposable_nm_mask(weight, n, m, method=fn, prior=prior)


def test_unknown_method_lists_the_names():
    with pytest.raises(ValueError, match="mincostflow"):
        transposable_nm_mask(torch.randn(4, 4), 2, 4, method="hungarian")
    with pytest.raises(ValueError, match="enumerate"):
        transposable_nm_mask(torch.randn(8, 8), 4, 8, method="enumerate")


def test_feasibility_checker_agrees_on_transpose():
    torch.manual_seed(1)
    w = torch.randn(24, 40)
    mask = transposable_nm_mask(w, 4, 8)
    assert is_transposable_nm(mask, 4, 8) and is_transposable_nm(mask.T, 4, 8)


def test_transposable_tile_size_is_limited():
    with pytest.raises(ValueError, match="m must be at most 32"):
        transposable_nm_mask(torch.randn(64, 64), 20, 64)
