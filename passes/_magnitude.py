"""Shared helpers of the magnitude passes: row segments, keep counts, pattern records."""

from __future__ import annotations

from ..capture import Target

__all__ = ["row_segments", "keep_count", "block_sq_norms"]


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


def block_sq_norms(weight, target: Target, block: tuple[int, int], cross_gates: bool):
    """Differentiable squared L2 norm of every block, segments stacked: (R, C).

    Same block layout as :func:`compressor.passes.block_prune.segment_block_scores`
    (gate segments, zero padding at the edges).
    """
    import torch
    import torch.nn.functional as F

    bh, bw = block
    parts = []
    for _, r0, r1 in row_segments(target, cross_gates):
        seg = weight[r0:r1]
        seg = F.pad(seg, (0, (-seg.shape[1]) % bw, 0, (-seg.shape[0]) % bh))
        R, C = seg.shape[0] // bh, seg.shape[1] // bw
        parts.append(seg.reshape(R, bh, C, bw).pow(2).sum(dim=(1, 3)))  # (R, C)
    return torch.cat(parts, dim=0)
