"""Mask diversity counts (docs/methods.md section 3) and kept-magnitude quality measures."""

from __future__ import annotations

import math

import pytest
import torch

from compressor.solvers import (
    count_transposable_tiles,
    kept_magnitude,
    kept_magnitude_ratio,
    nm_diversity,
    paper_diversity_8x8,
    tile_kept_magnitude,
    tile_kept_magnitude_ratio,
    transposable_nm_diversity,
    transposable_nm_mask,
    unstructured_diversity,
)

from .conftest import brute_tiles


def test_tile_counts_from_the_paper():
    assert count_transposable_tiles(2, 4) == 90
    assert count_transposable_tiles(4, 8) == 116_963_796_250


@pytest.mark.parametrize("n,m", [(1, 3), (2, 4), (1, 4), (3, 4), (1, 5), (2, 5), (4, 5)])
def test_tile_counts_match_brute_force(n, m):
    if (n, m) == (2, 5):
        expected = 2040  # OEIS A001499 (two ones per row and column), n = 5
    else:
        expected = len(brute_tiles(n, m))
    assert count_transposable_tiles(n, m) == expected


def test_tile_counts_closed_forms():
    for m in range(2, 8):
        assert count_transposable_tiles(1, m) == math.factorial(m)  # permutation matrices
        assert count_transposable_tiles(m - 1, m) == math.factorial(m)  # complements
    assert count_transposable_tiles(3, 6) == 297_200  # OEIS A001501


def test_paper_per_tensor_diversity_8x8():
    got = paper_diversity_8x8()
    paper = {
        "unstructured": 1.8e18,
        "4:8": 5.8e14,
        "2:4": 2.8e12,
        "transposable 4:8": 1.2e11,
        "transposable 2:4": 6.6e7,
    }
    for key, value in paper.items():
        assert float(f"{got[key]:.1e}") == value, key
    assert got["unstructured"] == math.comb(64, 32)
    assert got["4:8"] == 70**8 and got["2:4"] == 6**16
    assert got["transposable 4:8"] == 116_963_796_250 and got["transposable 2:4"] == 90**4


def test_diversity_argument_checks():
    assert unstructured_diversity(4, 4, 0.5) == math.comb(16, 8)
    assert nm_diversity(2, 8, 2, 4) == 6**4
    assert transposable_nm_diversity(8, 8, 1, 4) == 24**4
    with pytest.raises(ValueError, match="multiple"):
        nm_diversity(2, 6, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        transposable_nm_diversity(6, 8, 2, 4)


def test_kept_magnitude_and_ratios():
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0, 5.0]])
    mask = torch.tensor([[True, False, True, False, False]])
    opt = torch.tensor([[False, False, True, True, True]])
    assert kept_magnitude(w, mask) == 4.0
    assert kept_magnitude_ratio(w, mask, opt) == pytest.approx(4.0 / 12.0)
    per_tile = tile_kept_magnitude(w, opt, 4)
    assert per_tile.tolist() == [[7.0, 5.0]]
    ratios = tile_kept_magnitude_ratio(w, mask, opt, 4)
    assert ratios.tolist() == [[4.0 / 7.0, 0.0]]
    zero = torch.zeros(1, 5)
    assert kept_magnitude_ratio(zero, mask, opt) == 1.0
    with pytest.raises(ValueError, match="mask"):
        kept_magnitude(w, mask[:, :4])


def test_exact_ratio_is_one_and_greedy_below():
    torch.manual_seed(2)
    w = torch.randn(32, 32)
    opt = transposable_nm_mask(w, 4, 8)
    greedy = transposable_nm_mask(w, 4, 8, method="greedy")
    tiles = tile_kept_magnitude_ratio(w, greedy, opt, 8)
    assert tiles.shape == (4, 4)
    assert (tiles <= 1 + 1e-6).all()
    assert kept_magnitude_ratio(w, opt, opt) == 1.0
