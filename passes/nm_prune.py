"""One-shot plain N:M pruning along the input dimension (Hubara et al., arXiv 2102.08124).

Layers with fewer input features than M cannot hold an N:M group: they are skipped and the
report says so (they stay dense and are reported as dense).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RecipeError
from ..patterns import NM
from ..solvers import nm_mask
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["NMPruneConfig", "nm_prune"]


@dataclass(frozen=True)
class NMPruneConfig(PassConfig):
    """Keep ``n`` of every ``m`` consecutive weights along the input dimension (0 < n < m)."""

    n: int = 2
    m: int = 4

    def validate(self, path: str) -> None:
        if self.m < 2:
            raise RecipeError(f"{path}.m", f"{self.m} is invalid; m must be at least 2")
        if not 0 < self.n < self.m:
            raise RecipeError(f"{path}.n", f"{self.n} is invalid; n must satisfy 0 < n < m (m = {self.m})")


@register_pass("nm_prune", NMPruneConfig)
def nm_prune(state: CompressionState, config: NMPruneConfig, targets: list[Target]) -> PassResult:
    """Keep the N largest |w| in every group of M consecutive input weights."""
    result = PassResult()
    for target in targets:
        if target.in_features < config.m:
            result.skipped[target.name] = f"{target.in_features} input features < m={config.m}: left dense"
            continue
        prior = state.mask(target)
        mask = nm_mask(state.weight(target), config.n, config.m, prior=prior)
        state.set_mask(target, mask)
        result.layers[target.name] = LayerUpdate(NM(config.n, config.m), 1.0 - config.n / config.m)
    return result
