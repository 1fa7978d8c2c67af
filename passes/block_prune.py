"""One-shot block magnitude pruning (Narang et al., arXiv 1711.02782; docs/methods.md section 1).

Every weight matrix is cut into ``bh x bw`` blocks, each block is scored (max|w| as in the
paper, or mean|w| / L2 norm), and the lowest-scoring blocks are zeroed. With ``balanced``
every block row keeps the same number of blocks: the layout the sparse kernels run fastest.
Blocks stay inside one LSTM/GRU gate unless ``cross_gates`` is set.

Shapes that are not multiples of the block are padded: the last block row/column holds a
partial block, scored on its real entries, and counts as one block. The measured sparsity in
the report can therefore differ slightly from the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ..config import check_block, check_range
from ..patterns import BalancedBlock, Block
from ..solvers import block_scores, expand_block_mask, rowwise_topk_mask, topk_mask
from ..solvers.ranking import balanced_block_counts, global_topk_masks
from ._magnitude import keep_count, row_segments
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["BlockPruneConfig", "block_prune", "layer_block_mask", "global_block_masks", "segment_block_scores",
           "expand_segments"]


@dataclass(frozen=True)
class BlockPruneConfig(PassConfig):
    """Block pruning settings.

    ``block``: [rows, cols] of a block. ``sparsity``: fraction of blocks removed, in [0, 1).
    ``score``: ``max_abs`` | ``mean_abs`` | ``l2``. ``ranking``: ``layer`` (each layer to
    ``sparsity``) or ``global`` (one ranking over all selected layers). ``balanced``: keep the
    same number of blocks in every block row. ``cross_gates``: let blocks span LSTM/GRU gates.
    """

    block: tuple[int, int] = (16, 16)
    sparsity: float = 0.5
    score: Literal["max_abs", "mean_abs", "l2"] = "max_abs"
    ranking: Literal["layer", "global"] = "layer"
    balanced: bool = False
    cross_gates: bool = False

    def validate(self, path: str) -> None:
        check_range(f"{path}.sparsity", self.sparsity, 0.0, 1.0)
        check_block(f"{path}.block", self.block)


def segment_block_scores(weight: torch.Tensor, target, block, score: str, cross_gates: bool):
    """Block scores of every row segment stacked: ((R, C), segment block-row counts)."""
    parts = [block_scores(weight[r0:r1], block, score) for _, r0, r1 in row_segments(target, cross_gates)]
    return torch.cat(parts, dim=0), [p.shape[0] for p in parts]


def expand_segments(block_mask: torch.Tensor, sizes: list[int], target, block, cross_gates: bool, shape) -> torch.Tensor:
    """Element mask of ``shape`` from a stacked (R, C) block mask (inverse of the stacking above)."""
    parts = [
        expand_block_mask(bm, block, (r1 - r0, shape[1]))
        for bm, (_, r0, r1) in zip(block_mask.split(sizes, dim=0), row_segments(target, cross_gates))
    ]
    return torch.cat(parts, dim=0)


def layer_block_mask(weight: torch.Tensor, target, block, score: str, sparsity: float, balanced: bool,
                     cross_gates: bool) -> torch.Tensor:
    """Element mask keeping the top-scoring blocks of one layer at ``sparsity`` (per layer ranking)."""
    scores, sizes = segment_block_scores(weight, target, block, score, cross_gates)
    if balanced:
        block_mask = rowwise_topk_mask(scores, keep_count(scores.shape[1], sparsity))
    else:
        block_mask = topk_mask(scores, keep_count(scores.numel(), sparsity))
    return expand_segments(block_mask, sizes, target, block, cross_gates, weight.shape)


def global_block_masks(weights, targets, block, score: str, sparsity: float, balanced: bool, cross_gates: bool,
                       current=None) -> list[torch.Tensor]:
    """Element masks of several layers ranked together, ``sparsity`` of all their blocks pruned.

    Free pattern: one top-k over every block of every layer. Balanced: each layer keeps the same
    number of blocks in all its block rows, the numbers chosen under the one budget by
    :func:`compressor.solvers.ranking.balanced_block_counts` (the kept sparsity is then at least
    ``sparsity``, up to one block row's worth of blocks). ``current`` (masks now installed) caps
    every layer's count so that a schedule that tightens masks never regrows a block.
    """
    scored = [segment_block_scores(w, t, block, score, cross_gates) for w, t in zip(weights, targets)]
    budget = keep_count(sum(sc.numel() for sc, _ in scored), sparsity)
    if balanced:
        caps = None
        if current is not None:
            caps = [int(segment_block_scores(m.float(), t, block, "max_abs", cross_gates)[0].sum(dim=1).max())
                    for m, t in zip(current, targets)]
        counts = balanced_block_counts([sc for sc, _ in scored], budget, caps)
        block_masks = [rowwise_topk_mask(sc, k) for (sc, _), k in zip(scored, counts)]
    else:
        block_masks = global_topk_masks([sc for sc, _ in scored], budget)
    return [expand_segments(bm, sizes, t, block, cross_gates, w.shape)
            for bm, (_, sizes), t, w in zip(block_masks, scored, targets, weights)]


@register_pass("block_prune", BlockPruneConfig)
def block_prune(state: CompressionState, config: BlockPruneConfig, targets: list[Target]) -> PassResult:
    """Zero the lowest-scoring blocks of every selected layer."""
    result = PassResult()
    pattern = (BalancedBlock if config.balanced else Block)(*config.block)
    weights = [state.weight(t) for t in targets]
    if config.ranking == "layer":
        masks = [layer_block_mask(w, t, config.block, config.score, config.sparsity, config.balanced, config.cross_gates)
                 for w, t in zip(weights, targets)]
    else:  # global ranking: one budget over every selected layer's blocks
        masks = global_block_masks(weights, targets, config.block, config.score, config.sparsity, config.balanced,
                                   config.cross_gates)
    for target, mask in zip(targets, masks):
        state.set_mask(target, mask)
        measured = round(1.0 - float(mask.float().mean()), 6)
        result.layers[target.name] = LayerUpdate(pattern,
                                                 config.sparsity if config.ranking == "layer" else measured)
    return result
