"""Group-lasso fine-tuning on weight blocks (Narang et al., arXiv 1711.02782; docs/methods.md section 1).

Adds ``lambda_g * sum over blocks ||w_block||_2`` to the task loss while fine-tuning. The norm
is not differentiable at zero, so two methods are offered:

- ``proximal`` (default): the task loss is optimised as usual and, after every optimizer step,
  each block is shrunk by the proximal operator of the group norm,
  ``w_b <- w_b * max(0, 1 - lr * lambda_g / ||w_b||)``, which sets weak blocks exactly to zero;
- ``smoothed``: ``sqrt(||w_b||^2 + smoothing)`` in the loss, plain gradient descent.

Alone, group lasso needs a large ``lambda_g`` to zero many blocks; ``prune_sparsity`` then
removes the weakest blocks (by L2 norm) at the end, the paper's "group lasso + pruning" recipe.
The report carries the distribution of block norms before and after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..config import check_block, check_range
from ..errors import RecipeError
from ..patterns import Block, Dense
from ..training import TrainConfig, TrainHooks, fine_tune
from ._magnitude import block_sq_norms, row_segments
from .block_prune import expand_segments, layer_block_mask
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["GroupLassoConfig", "group_lasso", "block_norm_summary"]


@dataclass(frozen=True)
class GroupLassoConfig(PassConfig):
    """``lambda_g``: strength; ``method``: proximal | smoothed; ``prune_sparsity``: optional final
    one-shot block pruning (by L2 norm) after training; ``zero_tol``: a block whose norm is at
    most this counts as zero in the report."""

    block: tuple[int, int] = (16, 16)
    lambda_g: float = 1e-4
    method: Literal["proximal", "smoothed"] = "proximal"
    smoothing: float = 1e-8
    prune_sparsity: float | None = None
    balanced: bool = False
    cross_gates: bool = False
    zero_tol: float = 1e-6
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, path: str) -> None:
        if self.lambda_g <= 0:
            raise RecipeError(f"{path}.lambda_g", f"{self.lambda_g} is invalid; must be > 0")
        if self.smoothing <= 0:
            raise RecipeError(f"{path}.smoothing", f"{self.smoothing} is invalid; must be > 0")
        check_block(f"{path}.block", self.block)
        if self.prune_sparsity is not None:
            check_range(f"{path}.prune_sparsity", self.prune_sparsity, 0.0, 1.0)


def block_norm_summary(norms: torch.Tensor, zero_tol: float) -> dict:
    """Quantiles of block norms and the fraction at (or below) ``zero_tol``."""
    flat = norms.flatten().double()
    qs = torch.quantile(flat, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)).tolist()
    return {"min": qs[0], "p10": qs[1], "median": qs[2], "p90": qs[3], "max": qs[4],
            "zero_fraction": float((flat <= zero_tol).double().mean()), "blocks": flat.numel()}


class _Hooks(TrainHooks):
    def __init__(self, state, config: GroupLassoConfig, targets):
        self.state, self.config, self.targets = state, config, targets

    def extra_loss(self, model):
        c = self.config
        if c.method != "smoothed":
            return None
        return c.lambda_g * sum((block_sq_norms(self.state.weight_live(t), t, c.block, c.cross_gates) + c.smoothing)
                                .sqrt().sum() for t in self.targets)

    @torch.no_grad()
    def after_step(self, step, lr):
        c = self.config
        if c.method != "proximal":
            return
        for t in self.targets:
            w = self.state.original(t)
            norms = block_sq_norms(w, t, c.block, c.cross_gates).sqrt()  # (R, C)
            scale = (1 - lr * c.lambda_g / norms.clamp_min(1e-30)).clamp_min(0)
            sizes = [-(-(r1 - r0) // c.block[0]) for _, r0, r1 in row_segments(t, c.cross_gates)]
            factor = _expand_values(scale, sizes, t, c, w.shape)
            w.mul_(factor.to(w.dtype))


def _expand_values(values, sizes, target, config, shape):
    """Expand per-block values (R, C) to elements, with the same segments as the masks."""
    rows = []
    for v, (_, r0, r1) in zip(values.split(sizes, dim=0), row_segments(target, config.cross_gates)):
        full = v.repeat_interleave(config.block[0], 0).repeat_interleave(config.block[1], 1)
        rows.append(full[: r1 - r0, : shape[1]])
    return torch.cat(rows, dim=0)


@register_pass("group_lasso", GroupLassoConfig, trains=True)
def group_lasso(state: CompressionState, config: GroupLassoConfig, targets: list[Target]) -> PassResult:
    """Fine-tune with a group-lasso penalty on weight blocks, optionally prune the weakest blocks."""
    c = config
    result = PassResult()

    def norms():
        with torch.no_grad():
            return torch.cat([block_sq_norms(state.weight(t), t, c.block, c.cross_gates).sqrt().flatten() for t in targets])

    before = block_norm_summary(norms(), c.zero_tol)
    history = fine_tune(state, c.train, _Hooks(state, c, targets), f"group_lasso ({c.method})")
    after = block_norm_summary(norms(), c.zero_tol)
    for t in targets:
        w = state.weight(t)
        if c.prune_sparsity is not None:
            state.set_mask(t, layer_block_mask(w, t, c.block, "l2", c.prune_sparsity, c.balanced, c.cross_gates))
            pattern, target_sparsity = Block(*c.block), c.prune_sparsity
        else:
            sq = block_sq_norms(w, t, c.block, c.cross_gates)
            sizes = [-(-(r1 - r0) // c.block[0]) for _, r0, r1 in row_segments(t, c.cross_gates)]
            mask = expand_segments(sq.sqrt() > c.zero_tol, sizes, t, c.block, c.cross_gates, w.shape)
            state.set_mask(t, mask)  # blocks the penalty zeroed stay zero
            measured = 1.0 - float(mask.float().mean())
            pattern, target_sparsity = (Block(*c.block) if measured > 0 else Dense()), round(measured, 6)
        result.layers[t.name] = LayerUpdate(pattern, target_sparsity)
    result.metrics = {"block_norms_before": before, "block_norms_after": after, "history": history}
    result.notes.append(
        f"block norms: median {before['median']:.4g} -> {after['median']:.4g}, "
        f"zero blocks {before['zero_fraction']:.1%} -> {after['zero_fraction']:.1%}"
    )
    return result
