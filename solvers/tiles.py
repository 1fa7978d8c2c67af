"""Tiling helpers for transposable N:M masks (Hubara et al., arXiv 2102.08124; docs/methods.md section 3).

A transposable N:M mask keeps, in every M x M tile (M rows x M columns of the matrix), exactly N
entries in each row and each column, so that both W and W^T are N:M along their input dimension.
Tiles are independent, so every solver works on a batch of tiles of shape (T, M, M).

Matrices whose sides are not multiples of M
-------------------------------------------
The matrix is zero-padded on the bottom/right to multiples of M (what a hardware N:M format sees),
the padded matrix is solved, and the result is cropped. Precisely, for a tile holding ``r`` real
rows and ``c`` real columns (``p = M - r`` padding rows, ``q = M - c`` padding columns):

* the *padded* mask is exactly transposable N:M: every row and column of every M x M tile keeps N;
  equivalently, the cropped mask is *completable* (:func:`is_transposable_nm` checks this exactly
  with the closed-form conditions of :func:`edge_tile_ok`): every real row keeps between
  ``max(0, N - q)`` and ``N`` real entries, every real column between ``max(0, N - p)`` and ``N``,
  and the tile's real kept count ``K`` satisfies ``q*max(0, N-p) <= r*N - K <= q*min(N, r)`` and
  ``p*max(0, N-q) <= c*N - K <= p*min(N, c)``;
* full tiles (``r = c = M``) keep exactly N per row and column;
* the exact solvers maximise, lexicographically, (1) the number of real entries kept, reaching
  ``K = min(r*c, r*N - q*max(0, N-p), c*N - p*max(0, N-q))`` (:func:`max_real_kept`), then
  (2) the number of prior-kept entries, then (3) the kept magnitude. The approximate solvers
  (greedy, sinkhorn) use the same priority order for their choices but guarantee only the first
  bullet.

Scores
------
:class:`TileProblem` keeps the three criteria apart: ``mag`` is |w| (float32, or float64 for
float64 weights; padding is 0), ``prior`` and ``real`` are boolean (or None). Solvers that need
one number per entry use :func:`float_scores`: |w| itself when there is neither prior nor
padding, otherwise |w| over the tile's largest |w| (in [0, 1]; all-zero tiles stay 0) plus
lexicographic bonuses in float64. Min-cost flow uses integer keys (see ``mincostflow.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import check_nm, check_prior, check_weight

__all__ = [
    "TileProblem",
    "make_problem",
    "to_tiles",
    "from_tiles",
    "float_scores",
    "normalised",
    "bonus_weights",
    "max_real_kept",
    "edge_tile_ok",
    "is_transposable_nm",
]


def to_tiles(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad a 2-D tensor to multiples of ``m`` and cut it into tiles: ((T, m, m), (R, C))."""
    rows, cols = x.shape
    pad_r, pad_c = (-rows) % m, (-cols) % m
    if pad_r or pad_c:
        x = F.pad(x, (0, pad_c, 0, pad_r))
    R, C = x.shape[0] // m, x.shape[1] // m
    tiles = x.reshape(R, m, C, m).permute(0, 2, 1, 3).reshape(R * C, m, m)  # (T, M, M)
    return tiles, (R, C)


def from_tiles(tiles: torch.Tensor, grid: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_tiles`: (T, m, m) tiles back to a matrix, cropped to ``shape``."""
    R, C = grid
    m = tiles.shape[-1]
    full = tiles.reshape(R, C, m, m).permute(0, 2, 1, 3).reshape(R * m, C * m)  # (R*M, C*M)
    return full[: shape[0], : shape[1]].contiguous()


@dataclass
class TileProblem:
    """A batch of transposable N:M tile problems cut from one matrix.

    ``mag``: (T, M, M) |w| (float32, float64 for float64 weights; padding is 0).
    ``prior``: (T, M, M) bool or None; entries to prefer keeping.
    ``real``: (T, M, M) bool or None (None when no padding was needed); False marks padding.
    """

    n: int
    m: int
    shape: tuple[int, int]
    grid: tuple[int, int]
    mag: torch.Tensor
    prior: torch.Tensor | None = None
    real: torch.Tensor | None = None

    @property
    def num_tiles(self) -> int:
        return self.mag.shape[0]

    def subset(self, index: torch.Tensor) -> "TileProblem":
        """The problem restricted to the tiles in ``index`` (grid/shape no longer meaningful)."""
        pick = (lambda t: None if t is None else t[index])
        return TileProblem(self.n, self.m, self.shape, self.grid, self.mag[index], pick(self.prior), pick(self.real))

    def to_matrix(self, tiles_mask: torch.Tensor) -> torch.Tensor:
        """(T, M, M) bool tile masks back to the cropped (rows, cols) mask."""
        return from_tiles(tiles_mask, self.grid, self.shape)


def make_problem(weight: torch.Tensor, n: int, m: int, prior: torch.Tensor | None = None) -> TileProblem:
    """Check the arguments and cut ``weight`` (and ``prior``) into normalised tiles."""
    check_weight(weight)
    check_nm(n, m)
    check_prior(prior, weight)
    if m > 32:
        raise ValueError(f"m must be at most 32 for transposable N:M tiles, got m={m}")
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    absw = weight.detach().abs().to(dtype)
    mag, grid = to_tiles(absw, m)  # (T, M, M)
    prior_t = None
    if prior is not None:
        prior_t, _ = to_tiles(prior.to(absw.device, torch.bool), m)  # (T, M, M)
    real_t = None
    if weight.shape[0] % m or weight.shape[1] % m:
        real_t, _ = to_tiles(torch.ones(weight.shape, dtype=torch.bool, device=absw.device), m)  # (T, M, M)
    return TileProblem(n, m, (int(weight.shape[0]), int(weight.shape[1])), grid, mag, prior_t, real_t)


def bonus_weights(n: int, m: int, unit: float) -> tuple[float, float]:
    """Bonuses (prior, real) that make the criteria lexicographic when magnitudes lie in [0, unit].

    One more prior-kept entry outweighs any magnitude difference (at most N*M*unit); one more real
    entry outweighs any prior-plus-magnitude difference.
    """
    nm = n * m
    b_prior = nm * unit + 1
    b_real = nm * (b_prior + unit) + 1
    return b_prior, b_real


def normalised(mag: torch.Tensor) -> torch.Tensor:
    """(T, M, M) magnitudes divided by each tile's largest one, in float64 (all-zero tiles stay 0)."""
    mag = mag.to(torch.float64)
    tile_max = mag.amax(dim=(1, 2), keepdim=True)  # (T, 1, 1)
    return mag / torch.where(tile_max > 0, tile_max, torch.ones_like(tile_max))


def float_scores(problem: TileProblem) -> torch.Tensor:
    """One score per entry, (T, M, M), ordering entries lexicographically by (real, prior, |w|).

    Without prior and padding this is |w| itself; otherwise normalised |w| in [0, 1] plus the
    bonuses of :func:`bonus_weights`, in float64.
    """
    if problem.prior is None and problem.real is None:
        return problem.mag
    scores = normalised(problem.mag)
    b_prior, b_real = bonus_weights(problem.n, problem.m, 1.0)
    if problem.prior is not None:
        scores += problem.prior.to(scores.dtype) * b_prior
    if problem.real is not None:
        scores += problem.real.to(scores.dtype) * b_real
    return scores


def max_real_kept(r: int, c: int, n: int, m: int) -> int:
    """Largest number of real entries an edge tile with ``r`` real rows and ``c`` real columns can keep."""
    p, q = m - r, m - c
    return min(r * c, r * n - q * max(0, n - p), c * n - p * max(0, n - q))


def edge_tile_ok(block: torch.Tensor, n: int, m: int) -> bool:
    """True if an r x c 0/1 ``block`` (r, c <= m) extends to an m x m tile with all row/column sums n.

    Closed-form conditions (see the module docstring); for r = c = m this is exactly "all row and
    column sums equal n".
    """
    r, c = block.shape
    p, q = m - r, m - c
    a = block.sum(1)
    b = block.sum(0)
    k = int(a.sum())
    if not (bool((a >= max(0, n - q)).all()) and bool((a <= n).all())):
        return False
    if not (bool((b >= max(0, n - p)).all()) and bool((b <= n).all())):
        return False
    x_total, y_total = r * n - k, c * n - k
    if not q * max(0, n - p) <= x_total <= q * min(n, r):
        return False
    return p * max(0, n - q) <= y_total <= p * min(n, c)


def is_transposable_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True if ``mask`` is transposable N:M: every full M x M tile keeps exactly N per row and
    column, and every edge tile (matrix sides not multiples of M) is completable through the
    zero padding to such a tile (see the module docstring)."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D, got shape {tuple(mask.shape)}")
    check_nm(n, m)
    rows, cols = mask.shape
    mask = mask.to(torch.int64)
    R, C = rows // m, cols // m
    if R and C:
        full = mask[: R * m, : C * m].reshape(R, m, C, m).permute(0, 2, 1, 3)  # (R, C, M, M)
        if not (bool((full.sum(3) == n).all()) and bool((full.sum(2) == n).all())):
            return False
    for i0 in range(0, rows, m):
        for j0 in range(0, cols, m):
            if i0 + m <= rows and j0 + m <= cols:
                continue
            if not edge_tile_ok(mask[i0 : i0 + m, j0 : j0 + m], n, m):
                return False
    return True
