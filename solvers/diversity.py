"""Mask diversity: how many valid masks a sparsity pattern allows (Hubara et al., arXiv 2102.08124).

Mask diversity is the number of distinct masks of a tensor that satisfy a pattern at a given
density; more diversity means more freedom to keep the important weights. Definitions that
reproduce the paper's numbers for one 8 x 8 tensor at 50% density (docs/methods.md section 3):

* unstructured: C(64, 32) = 1.83e18 (any 32 of the 64 entries);
* N:M (along rows): C(M, N) ** (64 / M) independent groups: 4:8 -> 70**8 = 5.76e14,
  2:4 -> 6**16 = 2.82e12;
* transposable N:M: (number of valid M x M tiles) ** (64 / M**2): 4:8 -> 116,963,796,250 = 1.17e11
  (one tile), 2:4 -> 90**4 = 6.56e7 (four tiles).

The number of valid M x M tiles (0/1 matrices with every row and column sum N) is computed exactly
by dynamic programming over the column sums: rows are added one at a time and the state is the
multiset of column sums, stored as "how many columns have sum s" for s = 0..N. Exact integer
arithmetic; instant up to M = 8, about half a minute for M = 16 (8:16 has about 3.5e55 tiles).
"""

from __future__ import annotations

import functools
import math

__all__ = [
    "count_transposable_tiles",
    "unstructured_diversity",
    "nm_diversity",
    "transposable_nm_diversity",
    "paper_diversity_8x8",
]


def _check(n: int, m: int) -> None:
    if not isinstance(n, int) or not isinstance(m, int) or m < 1 or not 0 <= n <= m:
        raise ValueError(f"need integers 0 <= n <= m and m >= 1, got n={n!r}, m={m!r}")


def _row_choices(state: tuple[int, ...], n: int):
    """Ways to put a row's n ones on columns grouped by current sum: yields (new_state, ways)."""
    levels = len(state) - 1  # sums 0..n; columns at sum n are full

    def rec(s: int, left: int, new: list[int], ways: int):
        if s == levels:
            if left == 0:
                yield tuple(new), ways
            return
        avail = state[s]
        for k in range(min(avail, left) + 1):
            nxt = new.copy()
            nxt[s] -= k
            nxt[s + 1] += k
            yield from rec(s + 1, left - k, nxt, ways * math.comb(avail, k))

    yield from rec(0, n, list(state), 1)


def count_transposable_tiles(n: int, m: int) -> int:
    """Number of m x m 0/1 matrices whose every row and every column sums to n (exact)."""
    _check(n, m)
    return _count(n, m)


@functools.lru_cache(maxsize=64)
def _count(n: int, m: int) -> int:
    start = tuple([m] + [0] * n)  # all m columns at sum 0
    layer = {start: 1}
    for _ in range(m):
        nxt: dict[tuple[int, ...], int] = {}
        for state, ways in layer.items():
            for new, w in _row_choices(state, n):
                nxt[new] = nxt.get(new, 0) + ways * w
        layer = nxt
    return layer.get(tuple([0] * n + [m]), 0)


def unstructured_diversity(rows: int, cols: int, density: float = 0.5) -> int:
    """C(rows*cols, k) with k = round(density * rows * cols): masks keeping exactly k entries."""
    total = rows * cols
    return math.comb(total, round(density * total))


def nm_diversity(rows: int, cols: int, n: int, m: int) -> int:
    """C(m, n) ** (rows * cols / m): N:M along rows (cols must be a multiple of m)."""
    _check(n, m)
    if cols % m:
        raise ValueError(f"cols={cols} is not a multiple of m={m}")
    return math.comb(m, n) ** (rows * cols // m)


def transposable_nm_diversity(rows: int, cols: int, n: int, m: int) -> int:
    """(valid m x m tiles) ** (number of tiles): transposable N:M (sides must be multiples of m)."""
    _check(n, m)
    if rows % m or cols % m:
        raise ValueError(f"shape ({rows}, {cols}) is not a multiple of m={m} on both sides")
    return count_transposable_tiles(n, m) ** ((rows // m) * (cols // m))


def paper_diversity_8x8() -> dict[str, int]:
    """The five per-tensor diversities of docs/methods.md section 3 for one 8 x 8 tensor at 50% density."""
    return {
        "unstructured": unstructured_diversity(8, 8, 0.5),
        "4:8": nm_diversity(8, 8, 4, 8),
        "2:4": nm_diversity(8, 8, 2, 4),
        "transposable 4:8": transposable_nm_diversity(8, 8, 4, 8),
        "transposable 2:4": transposable_nm_diversity(8, 8, 2, 4),
    }
