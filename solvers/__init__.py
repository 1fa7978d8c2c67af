"""Pure mask solvers: tensors in, boolean masks out, no model access."""

from .nm import is_nm, nm_mask
from .topk import (
    BLOCK_SCORES,
    block_counts,
    block_scores,
    expand_block_mask,
    reduce_block_mask,
    rowwise_topk_mask,
    topk_mask,
)

__all__ = [
    "BLOCK_SCORES",
    "block_counts",
    "block_scores",
    "expand_block_mask",
    "reduce_block_mask",
    "rowwise_topk_mask",
    "topk_mask",
    "nm_mask",
    "is_nm",
]
