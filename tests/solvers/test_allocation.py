"""Layer-wise allocation math against independent references: the OWL formula written out in numpy,
an LP solved by scipy for the sensitivity allocation, direct counting for the exact per-layer counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.solvers.allocation import (
    budget_counts,
    interpolate,
    lower_hull,
    meet_budget,
    outlier_ratio,
    owl_sparsities,
    proportional_counts,
    row_block_counts,
    sensitivity_sparsities,
)
from compressor.solvers.sparsegpt import hessian, sparsegpt_prune, wanda_mask


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 13.0]])  # mean 2.5
    assert outlier_ratio(scores, 5.0) == pytest.approx(1 / 8)  # only 13 > 12.5
    assert outlier_ratio(scores, 6.0) == 0.0


def test_owl_sparsities_follow_the_linear_map_and_meet_the_weighted_budget():
    ratios, sizes, budget, lam = [0.01, 0.04, 0.02, 0.03], [100, 400, 400, 300], 0.6, 0.08
    got = np.array(owl_sparsities(ratios, sizes, budget, lam))
    d = np.array(ratios)
    raw = budget + lam - 2 * lam * (d - d.min()) / (d.max() - d.min())  # most outliers: S - lam
    n = np.array(sizes, float)
    want = raw + (budget * n.sum() - (n * raw).sum()) / n.sum()  # one shift to the weighted mean
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (n * got).sum() / n.sum() == pytest.approx(budget, abs=1e-12)
    assert got[1] < got[3] < got[2] < got[0]  # more outliers, lower sparsity
    assert owl_sparsities([0.5, 0.5], [10, 30], 0.4, 0.1) == pytest.approx([0.4, 0.4])


def test_clipped_layers_still_meet_the_budget():
    got = meet_budget([0.0, 0.9, 0.95], [100, 100, 100], 0.9)
    n_max = 99 / 100  # a layer keeps at least one weight
    assert max(got) <= n_max + 1e-12 and min(got) >= 0
    assert sum(got) / 3 == pytest.approx(0.9, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_budget_counts_are_within_one_weight_and_exact_in_total(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5000, size=7).tolist()
    budget = float(rng.uniform(0.1, 0.9))
    s = meet_budget(rng.uniform(0, 1, size=7).tolist(), sizes, budget)
    counts = budget_counts(s, sizes, budget)
    assert sum(counts) == round(budget * sum(sizes))
    for k, si, n in zip(counts, s, sizes):
        assert abs(k - si * n) < 1 + 1e-9 and 0 <= k <= n - 1


@pytest.mark.parametrize("seed", range(4))
def test_proportional_counts_split_exactly(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 300, size=9)
    total = int(rng.integers(0, sizes.sum() + 1))
    got = proportional_counts(total, sizes.tolist()).numpy()
    assert got.sum() == total and (got >= 0).all() and (got <= sizes).all()
    assert (np.abs(got - total * sizes / sizes.sum()) < 1 + 1e-9).all()
    rows = torch.tensor(rng.integers(0, 40, size=5))
    table = row_block_counts(rows, [16, 16, 8]).numpy()
    assert (table.sum(1) == rows.numpy()).all() and (table <= np.array([16, 16, 8])).all()


def _lp_optimum(curves, sizes, budget):
    """min sum_l t_l, t_l >= every hull line of layer l, sum n_l s_l = budget * N: scipy's LP (HiGHS)."""
    from scipy.optimize import linprog

    L = len(sizes)
    cost = np.r_[np.zeros(L), np.ones(L)]
    a_ub, b_ub = [], []
    for l, curve in enumerate(curves):
        pts = [(0.0, 0.0), *curve]
        for (s1, c1), (s2, c2) in zip(pts, pts[1:]):
            slope = (c2 - c1) / (s2 - s1)
            row = np.zeros(2 * L)  # c1 + slope (s - s1) - t <= 0
            row[l], row[L + l] = slope, -1.0
            a_ub.append(row)
            b_ub.append(slope * s1 - c1)
    a_eq = [np.r_[np.array(sizes, float), np.zeros(L)]]
    bounds = [(0, c[-1][0]) for c in curves] + [(None, None)] * L
    res = linprog(cost, A_ub=np.array(a_ub), b_ub=b_ub, A_eq=np.array(a_eq), b_eq=[budget * sum(sizes)],
                  bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("seed", range(6))
def test_sensitivity_allocation_is_the_lp_optimum_on_convex_curves(seed):
    rng = np.random.default_rng(seed)
    grid = [0.3, 0.5, 0.7, 0.9]
    curves, sizes = [], rng.integers(50, 500, size=5).tolist()
    for _ in sizes:  # convex increasing costs: growing slopes
        slopes = np.sort(rng.uniform(0, 3, size=4))
        xs = np.r_[0.0, grid]
        ys = np.r_[0.0, np.cumsum(slopes * np.diff(xs))]
        curves.append(list(zip(grid, ys[1:].tolist())))
    budget = float(rng.uniform(0.2, 0.85))
    got = sensitivity_sparsities(curves, sizes, budget)
    assert sum(s * n for s, n in zip(got, sizes)) == pytest.approx(budget * sum(sizes), rel=1e-12)
    predicted = sum(interpolate([(0.0, 0.0), *c], s) for c, s in zip(curves, got))
    assert predicted == pytest.approx(_lp_optimum(curves, sizes, budget), rel=1e-7, abs=1e-10)
    off_grid = [s for s in got if min(abs(s - g) for g in [0.0, *grid]) > 1e-12]
    assert len(off_grid) <= 1


def test_sensitivity_allocation_prefers_the_insensitive_layer_and_refuses_an_unreachable_budget():
    curves = [[(0.5, 0.01), (0.9, 0.02)], [(0.5, 1.0), (0.9, 5.0)]]
    assert sensitivity_sparsities(curves, [100, 100], 0.45) == pytest.approx([0.9, 0.0])
    with pytest.raises(ValueError, match="measure higher sparsities"):
        sensitivity_sparsities(curves, [100, 100], 0.95)


def test_lower_hull_drops_points_above_the_chords():
    assert lower_hull([(0, 0), (0.5, 2.0), (1.0, 1.0), (0.7, 0.2)]) == [(0, 0), (0.7, 0.2), (1.0, 1.0)]


@pytest.mark.parametrize("ranking", ["layer", "row"])
def test_sparsegpt_prunes_exactly_the_count_it_is_given(ranking):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 40, generator=gen)
    w = torch.randn(11, 40, generator=gen)
    for prune in (0, 1, 173, 439):
        got = sparsegpt_prune(w, hessian(x), prune=prune, ranking=ranking, blocksize=16)
        assert int((~got.mask).sum()) == prune
        assert bool((got.weight[~got.mask] == 0).all())
        if ranking == "row":  # rows differ by at most one
            per_row = (~got.mask).sum(1)
            assert int(per_row.max() - per_row.min()) <= 1
    # a count equal to the uniform rule's gives the same mask as the sparsity
    same = sparsegpt_prune(w, hessian(x), prune=round(0.5 * 11 * 16) * 2 + round(0.5 * 11 * 8), blocksize=16)
    torch.testing.assert_close(same.weight, sparsegpt_prune(w, hessian(x), sparsity=0.5, blocksize=16).weight)


def test_wanda_prunes_exactly_the_count_and_the_lowest_scores_of_each_row():
    gen = torch.Generator().manual_seed(1)
    w, norms = torch.randn(7, 13, generator=gen), torch.rand(13, generator=gen) + 0.1
    mask = wanda_mask(w, norms, prune=40)
    assert int((~mask).sum()) == 40
    per_row = (~mask).sum(1)
    assert int(per_row.max() - per_row.min()) <= 1
    scores = w.abs() * norms
    for r in range(7):  # every pruned score of a row is below every kept one
        assert float(scores[r][~mask[r]].max()) <= float(scores[r][mask[r]].min())
