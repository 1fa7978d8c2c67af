"""One-shot block magnitude pruning (Narang et al., arXiv 1711.02782; PAPERS.md section 1).

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
from typing import Literal

import torch

from ..config import check_range
from ..errors import RecipeError
from ..patterns import BalancedBlock, Block
from ..solvers import block_scores, expand_block_mask, rowwise_topk_mask, topk_mask
from ..solvers.ranking import global_topk_masks
from ._magnitude import keep_count, row_segments
from .registry import PassConfig, PassResult, register_pass

__all__ = ["BlockPruneConfig", "block_prune"]


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
        if min(self.block) < 1:
            raise RecipeError(f"{path}.block", f"{list(self.block)} is invalid; both sizes must be >= 1")


def _scores(weight: torch.Tensor, target, config) -> list[torch.Tensor]:
    """Block scores of every row segment: [(R_s, C)]."""
    return [
        block_scores(weight[r0:r1], config.block, config.score)
        for _, r0, r1 in row_segments(target, config.cross_gates)
    ]


def _expand(block_masks: list[torch.Tensor], target, config, shape) -> torch.Tensor:
    parts = [
        expand_block_mask(bm, config.block, (r1 - r0, shape[1]))
        for bm, (_, r0, r1) in zip(block_masks, row_segments(target, config.cross_gates))
    ]
    return torch.cat(parts, dim=0)


@register_pass("block_prune", BlockPruneConfig)
def block_prune(state, config: BlockPruneConfig, targets) -> PassResult:
    """Zero the lowest-scoring blocks of every selected layer."""
    result = PassResult()
    weights = [state.weight(t) for t in targets]
    seg_scores = [_scores(w, t, config) for w, t in zip(weights, targets)]
    stacked = [torch.cat(s, dim=0) for s in seg_scores]  # (R, C) per layer, segments stacked
    if config.ranking == "global":
        total = sum(s.numel() for s in stacked)
        global_keep = global_topk_masks(stacked, keep_count(total, config.sparsity))
        fractions = [1.0 - float(k.float().mean()) for k in global_keep]
    else:
        global_keep = [None] * len(targets)
        fractions = [config.sparsity] * len(targets)
    pattern = (BalancedBlock if config.balanced else Block)(*config.block)
    for target, weight, scores, keep, frac in zip(targets, weights, stacked, global_keep, fractions):
        if config.balanced:
            block_mask = rowwise_topk_mask(scores, keep_count(scores.shape[1], frac))
        elif keep is not None:
            block_mask = keep
        else:
            block_mask = topk_mask(scores, keep_count(scores.numel(), frac))
        sizes = [s.shape[0] for s in _scores(weight, target, config)]
        mask = _expand(list(block_mask.split(sizes, dim=0)), target, config, weight.shape)
        state.set_mask(target, mask)
        result.layers[target.name] = {"pattern": pattern, "target_sparsity": round(frac, 6)}
    return result
