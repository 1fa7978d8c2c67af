"""Pure mask solvers: tensors in, boolean masks out, no model access.

Top-k and block scores (``topk``), plain N:M (``nm``), transposable N:M (``transposable``, with
the ``enumerate``, ``cyclecancel`` (compiled on first use), ``mincostflow``, ``greedy`` and
``sinkhorn`` solvers chosen through ``registry``), mask quality (``quality``) and mask diversity (``diversity``).
"""

from .diversity import (
    count_transposable_tiles,
    nm_diversity,
    paper_diversity_8x8,
    transposable_nm_diversity,
    unstructured_diversity,
)
from .nm import is_nm, nm_mask
from .quality import kept_magnitude, kept_magnitude_ratio, tile_kept_magnitude, tile_kept_magnitude_ratio
from .registry import EXACT_SOLVERS, SOLVER_NAMES, resolve_solver
from .tiles import is_transposable_nm, max_real_kept
from .topk import (
    BLOCK_SCORES,
    block_counts,
    block_scores,
    expand_block_mask,
    reduce_block_mask,
    rowwise_topk_mask,
    topk_mask,
)
from .transposable import transposable_nm_mask, transposable_nm_solve

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
    "transposable_nm_mask",
    "transposable_nm_solve",
    "is_transposable_nm",
    "max_real_kept",
    "SOLVER_NAMES",
    "EXACT_SOLVERS",
    "resolve_solver",
    "kept_magnitude",
    "kept_magnitude_ratio",
    "tile_kept_magnitude",
    "tile_kept_magnitude_ratio",
    "count_transposable_tiles",
    "unstructured_diversity",
    "nm_diversity",
    "transposable_nm_diversity",
    "paper_diversity_8x8",
]
