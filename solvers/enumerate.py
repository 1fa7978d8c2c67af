"""Exact transposable N:M by enumeration of all valid tiles (Hubara et al., arXiv 2102.08124).

For small M the valid M x M tiles (every row and column keeps exactly N) are few: 90 for 2:4. The
best tile of every tile of the matrix is then one matrix product, scores (T, M*M) @ patterns
(M*M, P), and an argmax over the P patterns: exact, vectorised and fast. Ties go to the pattern
with the lowest index in :func:`tile_patterns`' fixed (lexicographic) order, so masks are
deterministic.

Pattern counts grow fast (2040 for 2:5, 297,200 for 3:6), so enumeration is limited to tiles with
at most :data:`MAX_PATTERNS` patterns; use min-cost flow beyond.
"""

from __future__ import annotations

import functools
import itertools

import torch

from .diversity import count_transposable_tiles
from .tiles import TileProblem, float_scores

__all__ = ["MAX_PATTERNS", "tile_patterns", "enumerate_tiles", "enumerate_supported"]

#: Enumeration is refused beyond this many valid tiles (memory: T x P scores).
MAX_PATTERNS = 5000


def enumerate_supported(n: int, m: int) -> bool:
    """True if the number of valid m x m tiles is small enough to enumerate."""
    return m <= 6 and count_transposable_tiles(n, m) <= MAX_PATTERNS


@functools.lru_cache(maxsize=16)
def _patterns_cached(n: int, m: int) -> torch.Tensor:
    rows = [combo for combo in itertools.combinations(range(m), n)]
    out: list[tuple[int, ...]] = []

    def extend(prefix: list[tuple[int, ...]], col_counts: list[int]) -> None:
        i = len(prefix)
        if i == m:
            out.append(tuple(j for combo in prefix for j in combo))
            return
        remaining = m - i - 1
        for combo in rows:
            counts = col_counts.copy()
            for j in combo:
                counts[j] += 1
            # every column must still be able to reach n with the rows left, and not exceed n
            if all(cnt <= n and cnt + remaining >= n for cnt in counts):
                extend(prefix + [combo], counts)

    extend([], [0] * m)
    pats = torch.zeros(len(out), m * m, dtype=torch.bool)
    for k, cols_per_row in enumerate(out):
        for i in range(m):
            for j in cols_per_row[i * n : (i + 1) * n]:
                pats[k, i * m + j] = True
    return pats  # (P, M*M)


def tile_patterns(n: int, m: int) -> torch.Tensor:
    """All valid m x m tiles with N per row and column, as a (P, m, m) bool tensor (fixed order)."""
    if not enumerate_supported(n, m):
        raise ValueError(
            f"transposable {n}:{m} has {count_transposable_tiles(n, m)} valid tiles, more than "
            f"MAX_PATTERNS={MAX_PATTERNS}; use method='mincostflow'"
        )
    return _patterns_cached(n, m).reshape(-1, m, m).clone()


def enumerate_tiles(problem: TileProblem, chunk_tiles: int = 8192) -> torch.Tensor:
    """Exact best tile for every tile of ``problem``: (T, M, M) bool.

    Pattern scores are summed in float64 over chunks of ``chunk_tiles`` tiles (small chunks keep
    the (chunk, P) score block in cache), so the only error is float64 rounding of sums of N*M
    terms (|w| of float32 weights are exact in float64).
    """
    n, m = problem.n, problem.m
    pats = tile_patterns(n, m).reshape(-1, m * m)  # (P, M*M)
    scores = float_scores(problem).reshape(-1, m * m)  # (T, M*M)
    pats_t = pats.to(scores.device, torch.float64).T.contiguous()  # (M*M, P)
    best = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    for start in range(0, scores.shape[0], chunk_tiles):
        part = scores[start : start + chunk_tiles].to(torch.float64)  # (t, M*M)
        best[start : start + chunk_tiles] = (part @ pats_t).argmax(dim=1)  # (t, P) -> (t,)
    return pats.to(scores.device)[best].reshape(-1, m, m)  # (T, M, M)
