"""Greedy 2-approximation, its repair, and the sinkhorn solver: feasibility and quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.solvers import is_transposable_nm, kept_magnitude, transposable_nm_mask, transposable_nm_solve
from compressor.solvers.greedy import greedy_fill, greedy_tiles, repair_swaps
from compressor.solvers.tiles import make_problem

from .conftest import assert_exact_transposable


def python_greedy(tile: np.ndarray, n: int) -> np.ndarray:
    """Plain per-tile greedy: descending |w|, ties by lower flat index."""
    m = tile.shape[0]
    order = sorted(range(m * m), key=lambda k: (-tile.flat[k], k))
    keep = np.zeros((m, m), dtype=bool)
    for k in order:
        i, j = divmod(k, m)
        if keep[i].sum() < n and keep[:, j].sum() < n:
            keep[i, j] = True
    return keep


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (3, 8), (1, 8)])
def test_greedy_fill_matches_plain_python(n, m):
    rng = np.random.default_rng(m + n)
    tiles = np.abs(rng.standard_normal((300, m, m))).round(1)  # rounding makes ties
    got = greedy_fill(torch.from_numpy(tiles), n).numpy()
    broken = 0
    for k in range(300):
        ref = python_greedy(tiles[k], n)
        assert (got[k] == ref).all()
        broken += int((ref.sum(0) != n).any() or (ref.sum(1) != n).any())
    problem = make_problem(torch.from_numpy(np.concatenate(list(tiles), axis=1)), n, m)
    _, repaired = greedy_tiles(problem)
    assert repaired == broken


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16), (3, 5)])
@pytest.mark.parametrize("repair", ["swap", "exact"])
def test_greedy_is_feasible_and_below_optimal(n, m, repair):
    torch.manual_seed(n * m)
    w = torch.randn(8 * m, 6 * m)
    opt = transposable_nm_mask(w, n, m, method="exact")
    mask, info = transposable_nm_solve(w, n, m, method="greedy", repair=repair)
    assert_exact_transposable(mask, n, m)
    assert_exact_transposable(mask.T.contiguous(), n, m)
    assert kept_magnitude(w, mask) <= kept_magnitude(w, opt) * (1 + 1e-6)
    # greedy is a 2-approximation (and far better in practice)
    assert kept_magnitude(w, mask) >= 0.5 * kept_magnitude(w, opt)
    assert 0 <= info["tiles_repaired"] <= info["tiles"]


def test_repair_swaps_fixes_a_known_broken_tile():
    # Greedy leaves row 1 and column 0 with one kept entry each on this tile.
    tile = torch.tensor(
        [[3.0, 12.0, 4.0, 11.0], [1.0, 5.0, 8.0, 6.0], [15.0, 13.0, 7.0, 10.0], [14.0, 9.0, 2.0, 16.0]],
        dtype=torch.float64,
    )
    keep = greedy_fill(tile[None], 2)[0]
    assert keep.sum(1).tolist() == [2, 1, 2, 2] and keep.sum(0).tolist() == [2, 2, 1, 2]
    fixed = repair_swaps(keep[None], tile[None], 2)[0]
    assert fixed.sum(1).tolist() == [2, 2, 2, 2] and fixed.sum(0).tolist() == [2, 2, 2, 2]
    # the repair only adds along one augmenting path: it changes exactly three entries
    assert int((fixed != keep).sum()) == 3


def test_sinkhorn_is_feasible_and_close():
    torch.manual_seed(11)
    w = torch.randn(64, 64)
    for n, m in ((2, 4), (4, 8), (8, 16)):
        mask = transposable_nm_mask(w, n, m, method="sinkhorn")
        assert is_transposable_nm(mask, n, m) and is_transposable_nm(mask.T, n, m)
        opt = transposable_nm_mask(w, n, m, method="exact")
        ratio = kept_magnitude(w, mask) / kept_magnitude(w, opt)
        assert 0.9 <= ratio <= 1 + 1e-6
