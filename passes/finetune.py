"""Plain fine-tuning: train the model on a task with its current masks held fixed.

Useful after one-shot pruning (recover accuracy with the pattern frozen) and as the dense
baseline of the quality benchmark (same step budget as the pruning passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..training import TrainConfig, TrainHooks, fine_tune
from .registry import PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["FinetuneConfig", "finetune"]


@dataclass(frozen=True)
class FinetuneConfig(PassConfig):
    """Only ``train:`` (``targets``/``ignore`` are accepted and unused: every weight trains)."""

    train: TrainConfig = field(default_factory=TrainConfig)


@register_pass("finetune", FinetuneConfig, trains=True)
def finetune(state: CompressionState, config: FinetuneConfig, targets: list[Target]) -> PassResult:
    """Fine-tune every weight; existing masks stay as they are (pruned weights stay zero)."""
    history = fine_tune(state, config.train, TrainHooks(), "finetune")
    return PassResult(metrics={"history": history})
