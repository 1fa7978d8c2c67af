"""Shared helpers of the magnitude passes: row segments, keep counts, pattern records."""

from __future__ import annotations

from ..capture import Target

__all__ = ["row_segments", "keep_count"]


def row_segments(target: Target, cross_gates: bool) -> list[tuple[str | None, int, int]]:
    """Row ranges that blocks must not straddle: one per LSTM/GRU gate, or the whole matrix.

    Narang et al. prune the stacked gate matrices; a block that spans two gates would tie the
    fate of unrelated units together, so blocks stay inside one gate unless asked otherwise.
    """
    if target.gates and not cross_gates:
        return list(target.gates)
    return [(None, 0, target.shape[0])]


def keep_count(total: int, sparsity: float, at_least: int = 1) -> int:
    """How many of ``total`` units to keep at ``sparsity`` (rounded; never fewer than ``at_least``)."""
    return min(total, max(at_least, round((1.0 - sparsity) * total)))
