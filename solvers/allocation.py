"""Layer-wise sparsity allocation: one global budget, a sparsity per layer.

A budget ``S`` is the fraction of all the selected weights to remove, each layer weighted by its
size ``n_l``: ``sum_l k_l = round(S * sum_l n_l)`` with ``k_l`` the weights pruned in layer ``l``.
Three steps, each a pure function:

- choose real per-layer sparsities ``s_l`` whose size-weighted mean is ``S``:
  :func:`owl_sparsities` (Outlier Weighed Layerwise sparsity, Yin et al., arXiv 2310.05175, from
  :func:`outlier_ratio` of every layer) or :func:`sensitivity_sparsities` (least predicted cost on
  measured per-layer cost curves);
- turn them into whole weights per layer with the total exact: :func:`budget_counts`;
- spread a layer's count over the parts a solver prunes separately (column blocks, rows) so that
  the layer loses exactly that many: :func:`proportional_counts`, :func:`row_block_counts`.

No model access; numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["outlier_ratio", "owl_sparsities", "meet_budget", "budget_counts", "sensitivity_sparsities",
           "interpolate", "lower_hull", "proportional_counts", "row_block_counts", "max_sparsity"]


def max_sparsity(size: int) -> float:
    """The largest sparsity a layer of ``size`` weights may get: it keeps at least one weight."""
    return (size - 1) / size


def outlier_ratio(scores: torch.Tensor, threshold: float) -> float:
    """OWL's layerwise outlier distribution entry: the fraction of ``scores`` (any shape, non-negative:
    the Wanda scores ``|W_ij| * ||X_j||`` of one layer) greater than ``threshold`` times their mean."""
    s = scores.detach().double().reshape(-1)
    if s.numel() == 0:
        raise ValueError("outlier_ratio of an empty score tensor")
    return float((s > threshold * s.mean()).sum()) / s.numel()


def _check(sizes: Sequence[int], budget: float) -> None:
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"layer sizes must be positive, got {list(sizes)}")
    if not 0.0 <= budget < 1.0:
        raise ValueError(f"the budget must be in [0, 1), got {budget}")


def meet_budget(sparsities: Sequence[float], sizes: Sequence[int], budget: float) -> list[float]:
    """Shift every sparsity by one constant ``c`` (each clipped to [0, :func:`max_sparsity`]) so that
    the size-weighted mean is ``budget``: ``sum_l n_l clip(s_l + c) = budget * sum_l n_l``.

    The total is monotone in ``c``, so ``c`` is found by bisection (to float64 precision)."""
    _check(sizes, budget)
    s = torch.tensor([float(v) for v in sparsities], dtype=torch.float64)
    n = torch.tensor([int(v) for v in sizes], dtype=torch.float64)
    high = torch.tensor([max_sparsity(int(v)) for v in sizes], dtype=torch.float64)
    want = budget * float(n.sum())

    def total(c: float) -> float:
        return float((n * (s + c).clamp(min=0.0).minimum(high)).sum())

    lo, hi = -float(s.max()) - 1.0, 1.0 - float(s.min()) + 1.0  # all at 0 .. all at their maximum
    if total(hi) < want:
        raise ValueError(f"the budget {budget} cannot be met: every layer must keep at least one weight")
    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) < want:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    c = (lo + hi) / 2
    return [float(v) for v in (s + c).clamp(min=0.0).minimum(high)]


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], budget: float, lam: float) -> list[float]:
    """Per-layer sparsities from OWL outlier ratios ``D_l`` (:func:`outlier_ratio`).

    The paper sets ``S_l = 1 - D_l`` scaled into ``[S - lam, S + lam]`` around the budget ``S`` (more
    outliers, fewer weights removed). As its published code does, the ratios are mapped linearly:
    the layer with the most outliers gets ``S - lam``, the one with the fewest ``S + lam``; then, where
    the code shifts by the plain mean of the layers, every sparsity is shifted by one constant so that
    the mean *weighted by layer size* equals ``S`` (:func:`meet_budget`), since the budget counts
    weights. Equal ratios (or one layer) give every layer ``S``."""
    _check(sizes, budget)
    if len(ratios) != len(sizes):
        raise ValueError(f"{len(ratios)} outlier ratios for {len(sizes)} layers")
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    d = torch.tensor([float(v) for v in ratios], dtype=torch.float64)
    spread = float(d.max() - d.min())
    if spread > 0:
        s = budget + lam - 2.0 * lam * (d - d.min()) / spread
    else:
        s = torch.full_like(d, budget)
    return meet_budget(s.tolist(), sizes, budget)


def budget_counts(sparsities: Sequence[float], sizes: Sequence[int], budget: float) -> list[int]:
    """Whole weights to prune per layer: ``k_l`` within one weight of ``s_l * n_l`` (floor, plus one for
    the largest remainders) and ``sum_l k_l = round(budget * sum_l n_l)`` exactly, each layer keeping
    at least one weight. ``sparsities`` should already meet the budget (:func:`meet_budget`)."""
    _check(sizes, budget)
    if len(sparsities) != len(sizes):
        raise ValueError(f"{len(sparsities)} sparsities for {len(sizes)} layers")
    sizes = [int(n) for n in sizes]
    want = round(budget * sum(sizes))
    exact = [min(max(float(s), 0.0), max_sparsity(n)) * n for s, n in zip(sparsities, sizes)]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    short = want - sum(counts)
    while short > 0:  # one more weight for the largest remainders (again round the list if needed)
        moved = False
        for i in order:
            if short and counts[i] < sizes[i] - 1:
                counts[i] += 1
                short -= 1
                moved = True
        if not moved:
            raise ValueError(f"the budget {budget} cannot be met: every layer must keep at least one weight")
    while short < 0:  # the sparsities asked for more than the budget: take back from the smallest remainders
        for i in reversed(order):
            if short and counts[i] > 0:
                counts[i] -= 1
                short += 1
    return counts


def lower_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of ``(x, y)`` points, by increasing x (collinear points dropped)."""
    hull: list[tuple[float, float]] = []
    for p in sorted(points):
        if hull and hull[-1][0] == p[0]:  # the same x twice: keep the lower y
            if p[1] >= hull[-1][1]:
                continue
            hull.pop()
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear interpolation of ``(x, y)`` points (sorted or not) at ``x`` inside their range."""
    pts = sorted(points)
    if not pts[0][0] - 1e-12 <= x <= pts[-1][0] + 1e-12:
        raise ValueError(f"{x} is outside the measured range [{pts[0][0]}, {pts[-1][0]}]")
    for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
        if x <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (x - x1) / (x2 - x1)
    return pts[-1][1]


def sensitivity_sparsities(curves: Sequence[Sequence[tuple[float, float]]], sizes: Sequence[int],
                           budget: float) -> list[float]:
    """Per-layer sparsities meeting ``budget`` at the least predicted total cost.

    ``curves[l]`` holds measured ``(sparsity, cost)`` points of layer ``l`` pruned alone (cost: how much
    worse the whole model got; the dense point ``(0, 0)`` is implied); a layer's cost between two points
    is interpolated linearly, and the predicted total is the sum over layers. Greedy marginal cost: every
    segment of each curve's lower convex hull removes ``(s_b - s_a) * n_l`` weights for ``c_b - c_a``, and
    the segments are taken cheapest cost-per-weight first until the budget's weights are removed (the
    last one partly). That is the exact optimum when the curves are convex (otherwise of their convex
    hulls): every layer ends on a measured point except at most one, which lies between two.
    Raises ValueError when the budget needs more than the largest measured sparsities give."""
    _check(sizes, budget)
    if len(curves) != len(sizes):
        raise ValueError(f"{len(curves)} curves for {len(sizes)} layers")
    sizes = [int(n) for n in sizes]
    segments = []  # (cost per weight, layer, order along the hull, s_a, s_b)
    for layer, (curve, n) in enumerate(zip(curves, sizes)):
        points = [(float(s), float(c)) for s, c in curve]
        if any(not 0.0 <= s < 1.0 for s, _ in points):
            raise ValueError(f"curve {layer} has a sparsity outside [0, 1)")
        hull = lower_hull([(0.0, 0.0), *[p for p in points if p[0] > 0]])
        for j, ((s1, c1), (s2, c2)) in enumerate(zip(hull, hull[1:])):
            segments.append(((c2 - c1) / ((s2 - s1) * n), layer, j, s1, s2))
    segments.sort(key=lambda seg: (seg[0], seg[1], seg[2]))
    need = budget * sum(sizes)
    chosen = [0.0] * len(sizes)
    for _, layer, _, s1, s2 in segments:
        if need <= 0:
            break
        n = sizes[layer]
        take = min(need, (s2 - s1) * n)
        chosen[layer] = s1 + take / n
        need -= take
    if need > 1e-9 * max(1.0, budget * sum(sizes)):
        most = sum(max((float(s) for s, _ in c), default=0.0) * n for c, n in zip(curves, sizes)) / sum(sizes)
        raise ValueError(f"a budget of {budget:.4g} needs more than the measured curves reach (their largest "
                         f"sparsities remove {most:.4g} of the weights); measure higher sparsities")
    return chosen


def proportional_counts(total: int, sizes: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Split ``total`` pruned weights over parts of ``sizes`` (column blocks, rows) in proportion to
    their sizes, whole numbers summing to ``total`` exactly: cumulative rounding, part ``b`` gets
    ``round(total * C_b / N) - round(total * C_{b-1} / N)`` with ``C_b`` the sizes' running sum (each
    within one of its share, never more than its size). Returns int64 counts."""
    sizes = torch.as_tensor(sizes, dtype=torch.int64)
    n = int(sizes.sum())
    if not 0 <= int(total) <= n:
        raise ValueError(f"cannot prune {total} of {n} weights")
    cum = torch.cumsum(sizes, 0)
    bounds = (2 * int(total) * cum + n) // (2 * n)  # round half up, in exact integers
    return torch.diff(bounds, prepend=torch.zeros(1, dtype=torch.int64))


def row_block_counts(row_counts: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """Per row and column block, how many to prune: each row's count (``row_counts``, (rows,)) split over
    the blocks of ``widths`` in proportion to their widths by :func:`proportional_counts`' rule. (rows, blocks)."""
    widths_t = torch.as_tensor(widths, dtype=torch.int64)
    cols = int(widths_t.sum())
    r = row_counts.to(torch.int64).unsqueeze(1)
    bounds = (2 * r * torch.cumsum(widths_t, 0).unsqueeze(0) + cols) // (2 * cols)
    return torch.diff(bounds, dim=1, prepend=torch.zeros_like(bounds[:, :1]))
