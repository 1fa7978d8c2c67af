"""One-shot unstructured magnitude pruning: keep the largest |w|, per layer or globally."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..config import check_range
from ..patterns import Unstructured
from ..solvers import topk_mask
from ..solvers.ranking import global_topk_masks
from ._magnitude import keep_count
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["UnstructuredPruneConfig", "unstructured_prune"]


@dataclass(frozen=True)
class UnstructuredPruneConfig(PassConfig):
    """``sparsity``: fraction of weights removed, in [0, 1). ``ranking``: ``layer`` prunes every
    layer to ``sparsity``; ``global`` ranks all selected weights together (one threshold)."""

    sparsity: float = 0.5
    ranking: Literal["layer", "global"] = "layer"

    def validate(self, path: str) -> None:
        check_range(f"{path}.sparsity", self.sparsity, 0.0, 1.0)


@register_pass("unstructured_prune", UnstructuredPruneConfig)
def unstructured_prune(state: CompressionState, config: UnstructuredPruneConfig, targets: list[Target]) -> PassResult:
    """Zero the smallest-magnitude weights of every selected layer."""
    result = PassResult()
    scores = [state.weight(t).abs() for t in targets]
    if config.ranking == "global":
        total = sum(s.numel() for s in scores)
        masks = global_topk_masks(scores, keep_count(total, config.sparsity))
    else:
        masks = [topk_mask(s, keep_count(s.numel(), config.sparsity)) for s in scores]
    for target, mask in zip(targets, masks):
        state.set_mask(target, mask)
        result.layers[target.name] = LayerUpdate(Unstructured(), config.sparsity)
    return result
