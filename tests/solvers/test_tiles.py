"""Tiling, the edge-tile invariant for sides not multiples of M, and the feasibility checker."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from compressor.solvers import is_transposable_nm, max_real_kept, transposable_nm_mask
from compressor.solvers.tiles import edge_tile_ok, from_tiles, to_tiles

from .conftest import brute_tiles, tiles_of


@pytest.mark.parametrize("shape", [(8, 8), (7, 13), (1, 1), (4, 9)])
def test_to_from_tiles_roundtrip(shape):
    x = torch.arange(shape[0] * shape[1], dtype=torch.float32).reshape(shape)
    tiles, grid = to_tiles(x, 4)
    assert tiles.shape == (grid[0] * grid[1], 4, 4)
    assert torch.equal(tiles[0][: min(4, shape[0]), : min(4, shape[1])], x[:4, :4])
    assert torch.equal(from_tiles(tiles, grid, shape), x)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (1, 5), (4, 5), (2, 3)])
def test_edge_conditions_match_brute_force(n, m):
    pats = brute_tiles(n, m)
    for r in range(1, m + 1):
        for c in range(1, m + 1):
            crops = {p[:r, :c].tobytes() for p in pats}
            best = max(int(p[:r, :c].sum()) for p in pats)
            assert max_real_kept(r, c, n, m) == best, (r, c)
            if r * c > 12:
                continue
            for bits in itertools.product([False, True], repeat=r * c):
                block = np.array(bits, dtype=bool).reshape(r, c)
                expect = block.tobytes() in crops
                assert edge_tile_ok(torch.from_numpy(block), n, m) == expect, (r, c, block)


def test_is_transposable_nm_rejects_bad_masks():
    good = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    assert is_transposable_nm(good, 2, 4)
    rowwise = torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool)  # rows 2:4, columns not
    assert not is_transposable_nm(rowwise, 2, 4)
    # 3 x 3 real block keeping 6 = 2 per row and column: the padding row and column cannot be completed
    six = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    assert not is_transposable_nm(six, 2, 4)
    assert is_transposable_nm(good[:3, :3], 2, 4)
    # an edge tile with a real row that keeps more than N
    assert not is_transposable_nm(torch.ones(4, 3, dtype=torch.bool), 2, 4)


@pytest.mark.parametrize("shape", [(6, 7), (5, 4), (4, 5), (3, 3), (9, 2), (1, 10)])
def test_exact_edge_tiles_keep_the_most_real_entries(shape, patterns_2_4):
    torch.manual_seed(sum(shape))
    w = torch.randn(shape)
    for method in ("exact", "mincostflow"):
        mask = transposable_nm_mask(w, 2, 4, method=method)
        assert is_transposable_nm(mask, 2, 4) and is_transposable_nm(mask.T, 2, 4)
        for i0, j0, block in tiles_of(mask, 4):
            r, c = block.shape
            assert edge_tile_ok(block, 2, 4)
            assert int(block.sum()) == max(int(p[:r, :c].sum()) for p in patterns_2_4)
            # and, among those, the largest kept magnitude (brute force over the 90 tiles)
            vals = w[i0 : i0 + 4, j0 : j0 + 4].abs().numpy()
            crops = [p[:r, :c] for p in patterns_2_4 if p[:r, :c].sum() == block.sum()]
            best = max(vals[crop].sum() for crop in crops)
            assert vals[block.numpy()].sum() == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("method", ["greedy", "sinkhorn"])
@pytest.mark.parametrize("shape", [(10, 13), (3, 17), (17, 3)])
def test_approximate_solvers_respect_the_edge_invariant(method, shape):
    torch.manual_seed(7)
    w = torch.randn(shape)
    for n, m in ((2, 4), (4, 8), (3, 8)):
        mask = transposable_nm_mask(w, n, m, method=method)
        assert is_transposable_nm(mask, n, m) and is_transposable_nm(mask.T, n, m)
        for _, _, block in tiles_of(mask, m):
            assert edge_tile_ok(block, n, m)
