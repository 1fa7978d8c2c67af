"""Transposable N:M masks: the public entry point (Hubara et al., arXiv 2102.08124, section 3).

In every M x M tile (M rows x M columns of the matrix, *not* M*M consecutive weights of one row)
every row and every column keeps exactly N entries, so W and W^T are both N:M along their input
dimension and sparse tensor cores accelerate the forward and the backward pass.

* Sides not multiples of M: the matrix is zero-padded, solved and cropped; the precise invariant
  (every edge tile is completable through the padding; exact solvers keep the most real entries)
  is in :mod:`compressor.solvers.tiles`. :func:`is_transposable_nm` checks it.
* ``prior``: an existing mask (e.g. of an unstructured-sparse model). Exact solvers maximise the
  number of prior-kept entries kept first, then the kept magnitude; when a tile cannot be N:M
  with prior-kept entries alone, the largest other weights fill it: the result is always exactly
  transposable N:M. Greedy and sinkhorn visit prior-kept entries first.
* Ties and all-equal weights: every solver is deterministic (same input, same mask).
"""

from __future__ import annotations

import torch

from .registry import solve_tiles
from .tiles import is_transposable_nm, make_problem

__all__ = ["transposable_nm_mask", "transposable_nm_solve", "is_transposable_nm"]


def transposable_nm_solve(
    weight: torch.Tensor,
    n: int,
    m: int,
    method: str = "exact",
    prior: torch.Tensor | None = None,
    *,
    workers: int = 1,
    repair: str = "swap",
) -> tuple[torch.Tensor, dict]:
    """Like :func:`transposable_nm_mask`, also returning ``{"method", "tiles", "tiles_repaired"}``."""
    problem = make_problem(weight, n, m, prior)
    tiles, repaired = solve_tiles(problem, method, workers=workers, repair=repair)
    mask = problem.to_matrix(tiles).to(weight.device)
    return mask, {"method": method, "tiles": problem.num_tiles, "tiles_repaired": repaired}


def transposable_nm_mask(
    weight: torch.Tensor,
    n: int,
    m: int,
    method: str = "exact",
    prior: torch.Tensor | None = None,
    *,
    workers: int = 1,
    repair: str = "swap",
) -> torch.Tensor:
    """Boolean transposable N:M mask of a 2-D ``weight`` (out_features x in_features); True = kept.

    ``method``: one of :data:`compressor.solvers.SOLVER_NAMES` (``exact`` picks enumeration for
    M = 4 and min-cost flow otherwise; ``greedy`` is the fast 2-approximation with repair).
    ``prior``: optional mask of entries to prefer keeping (see the module docstring).
    ``workers``: processes for min-cost flow chunks. ``repair``: ``swap`` or ``exact`` (greedy).
    Returns a bool tensor of ``weight``'s shape on ``weight``'s device.
    """
    mask, _ = transposable_nm_solve(weight, n, m, method, prior, workers=workers, repair=repair)
    return mask
