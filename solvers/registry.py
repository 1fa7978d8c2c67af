"""Solver registry for transposable N:M masks (Hubara et al., arXiv 2102.08124; TSENOR, arXiv 2505.23949).

Recipes name a solver by string; :data:`SOLVER_NAMES` lists the valid names for validation:

* ``exact``: the fastest exact method for the given N:M: ``enumerate`` when the valid tiles are
  few enough (M = 4, and 2:5/1:M-style small cases), else ``cyclecancel`` where its C source
  compiles (M <= 64), else ``mincostflow``;
* ``enumerate``: exact, all valid tiles scored by one matrix product (small M only);
* ``cyclecancel``: exact, compiled per-tile greedy start + augmenting paths + negative-cycle
  cancelling on the same integer keys as ``mincostflow`` (3-4x faster at 4:8);
* ``mincostflow``: exact for any M, OR-Tools min-cost flow over all tiles of a chunk at once;
* ``greedy``: the 2-approximation vectorised over tiles, plus augmenting-swap repair;
* ``sinkhorn``: batched entropy-regularised transport (TSENOR-style), greedy rounding + repair.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import cyclecancel
from .enumerate import enumerate_supported, enumerate_tiles
from .greedy import greedy_tiles
from .mincostflow import mincostflow_tiles
from .sinkhorn import sinkhorn_tiles
from .tiles import TileProblem

__all__ = ["SOLVER_NAMES", "EXACT_SOLVERS", "resolve_solver", "solve_tiles"]

#: Every valid ``method`` / recipe ``solver`` name.
SOLVER_NAMES = ("exact", "enumerate", "cyclecancel", "mincostflow", "greedy", "sinkhorn")
#: Names whose masks are optimal (up to the documented integer/float precision).
EXACT_SOLVERS = ("exact", "enumerate", "cyclecancel", "mincostflow")


def resolve_solver(method: str, n: int, m: int) -> str:
    """The concrete solver ``method`` stands for at ``n``:``m`` (``exact`` -> enumerate, cyclecancel
    or mincostflow)."""
    if method not in SOLVER_NAMES:
        raise ValueError(f"method must be one of {SOLVER_NAMES}, got {method!r}")
    if method == "exact":
        if enumerate_supported(n, m):
            return "enumerate"
        return "cyclecancel" if cyclecancel.available(m) else "mincostflow"
    if method == "enumerate" and not enumerate_supported(n, m):
        raise ValueError(f"method='enumerate' does not support transposable {n}:{m} (too many tiles); use 'exact' or 'mincostflow'")
    if method == "cyclecancel" and not cyclecancel.available(m):
        why = cyclecancel.unavailable_reason() or f"it takes M up to {cyclecancel.MAX_M}"
        raise ValueError(f"method='cyclecancel' cannot solve transposable {n}:{m}: {why}; use 'exact' or 'mincostflow'")
    return method


def _exact_tiles(problem: TileProblem, workers: int = 1) -> torch.Tensor:
    name = resolve_solver("exact", problem.n, problem.m)
    return _SOLVERS[name](problem, workers=workers)[0]


def _enumerate(problem: TileProblem, **_: object) -> tuple[torch.Tensor, int]:
    return enumerate_tiles(problem), 0


def _cyclecancel(problem: TileProblem, **_: object) -> tuple[torch.Tensor, int]:
    return cyclecancel.cyclecancel_tiles(problem), 0


def _mincostflow(problem: TileProblem, workers: int = 1, **_: object) -> tuple[torch.Tensor, int]:
    return mincostflow_tiles(problem, workers=workers), 0


def _greedy(problem: TileProblem, workers: int = 1, repair: str = "swap", **_: object) -> tuple[torch.Tensor, int]:
    return greedy_tiles(problem, repair=repair, exact_solver=lambda sub: _exact_tiles(sub, workers))


def _sinkhorn(problem: TileProblem, **_: object) -> tuple[torch.Tensor, int]:
    return sinkhorn_tiles(problem)


_SOLVERS: dict[str, Callable[..., tuple[torch.Tensor, int]]] = {
    "enumerate": _enumerate,
    "cyclecancel": _cyclecancel,
    "mincostflow": _mincostflow,
    "greedy": _greedy,
    "sinkhorn": _sinkhorn,
}


def solve_tiles(problem: TileProblem, method: str = "exact", workers: int = 1, repair: str = "swap") -> tuple[torch.Tensor, int]:
    """Solve every tile of ``problem`` with ``method``: ((T, M, M) bool, number of tiles repaired).

    ``workers`` spreads min-cost flow chunks over processes; ``repair`` (greedy only) is
    ``swap`` or ``exact``.
    """
    name = resolve_solver(method, problem.n, problem.m)
    return _SOLVERS[name](problem, workers=workers, repair=repair)
