"""One budget over several layers: the balanced block counts against a brute-force search."""

from __future__ import annotations

import itertools

import pytest
import torch

from compressor.solvers.ranking import balanced_block_counts


def kept_score(scores, counts):
    """Sum of every row's ``k`` largest scores (what a balanced mask with these counts keeps)."""
    return sum(float(s.double().sort(dim=1, descending=True).values[:, :k].sum()) for s, k in zip(scores, counts))


def brute_best(scores, budget, caps, at_least=1):
    """Best kept score over every feasible count vector (exhaustive)."""
    ranges = [range(min(at_least, c), c + 1) for c in caps]
    feasible = [ks for ks in itertools.product(*ranges) if sum(s.shape[0] * k for s, k in zip(scores, ks)) <= budget]
    return max(kept_score(scores, ks) for ks in feasible)


@pytest.mark.parametrize("seed", range(12))
def test_equal_rows_gives_the_exact_optimum(seed):
    gen = torch.Generator().manual_seed(seed)
    rows = 3
    scores = [torch.rand(rows, c, generator=gen) * scale for c, scale in zip((4, 6, 5), (1.0, 3.0, 0.5))]
    total = sum(s.numel() for s in scores)
    budget = int(torch.randint(len(scores) * rows, total + 1, (1,), generator=gen))
    counts = balanced_block_counts(scores, budget)
    assert sum(rows * k for k in counts) <= budget
    assert kept_score(scores, counts) == pytest.approx(brute_best(scores, budget, [s.shape[1] for s in scores]))


@pytest.mark.parametrize("seed", range(12))
def test_unequal_rows_respect_budget_caps_and_are_maximal(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    scores = [torch.rand(r, c, generator=gen) for r, c in ((2, 5), (5, 3), (3, 6))]
    caps = [int(torch.randint(1, s.shape[1] + 1, (1,), generator=gen)) for s in scores]
    budget = int(torch.randint(10, sum(s.shape[0] * c for s, c in zip(scores, caps)) + 1, (1,), generator=gen))
    counts = balanced_block_counts(scores, budget, caps)
    used = sum(s.shape[0] * k for s, k in zip(scores, counts))
    assert used <= budget
    assert all(1 <= k <= c for k, c in zip(counts, caps))
    # no layer below its cap could take one more block per row within the budget
    assert all(k == c or used + s.shape[0] > budget for s, k, c in zip(scores, counts, caps))
    # greedy is not exact with unequal costs, but it is never far from the optimum here
    assert kept_score(scores, counts) >= 0.85 * brute_best(scores, budget, caps)


def test_at_least_one_block_per_row_even_over_budget():
    scores = [torch.rand(4, 3), torch.rand(4, 3)]
    assert balanced_block_counts(scores, budget=2) == [1, 1]
    assert balanced_block_counts(scores, budget=2, at_least=0) == [0, 0]


def test_the_larger_scores_win_the_budget():
    big, small = torch.full((2, 4), 5.0), torch.full((2, 4), 1.0)
    assert balanced_block_counts([small, big], budget=10) == [1, 4]
