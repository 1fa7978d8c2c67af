"""Gradual block pruning during fine-tuning (Narang et al., arXiv 1711.02782; docs/methods.md section 1).

Two schedules decide how many blocks are pruned as training goes on; every ``freq`` steps in
``[start, end)`` the masks are tightened, they never regrow (a mask only ever loses blocks and
the masked weights get no update), and after ``end`` the masks are frozen while training
continues to ``train.steps``.

- ``target``: the kept fraction follows a cubic ramp from 1 to ``1 - sparsity`` between
  ``start`` and ``end`` (Zhu & Gupta's gradual schedule); at each update every layer keeps its
  top-scoring blocks. The final sparsity is the one asked for. With ``ranking: global`` the
  blocks of all the selected layers are ranked together instead, so the layers end at different
  sparsities whose total is the one asked for (balanced: whole block rows' worth of blocks per
  layer under one budget, :func:`compressor.passes.block_prune.global_block_masks`).
- ``narang``: the paper's threshold. With ``q`` the ``percentile``-th percentile of |w| of each
  layer's dense weights at the start, ``theta = 2 q freq / (2 (ramp - start) + 3 (end - ramp))``
  and ``phi = mult * theta``; the threshold is ``theta (t - start + 1) / freq`` before ``ramp`` and
  ``(theta (ramp - start + 1) + phi (t - ramp + 1)) / freq`` after; blocks whose score is below
  it are pruned. The final sparsity is an outcome, reported as measured.

``group_lasso`` > 0 adds Narang's group-lasso term on the blocks (the combined method) while the
masks are being tightened, from the first step to ``end``: it pushes the blocks that are about to
go towards zero, so that pruning them costs less. After ``end`` nothing more is pruned and the
term would only shrink the kept blocks (measured: kept on for the whole run at 3e-4 it cost the
90% LM of BENCHMARKS.md 4.434 -> 4.871 perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..config import check_block, check_range
from ..errors import RecipeError
from ..patterns import BalancedBlock, Block
from ..training import TrainConfig, TrainHooks, fine_tune
from ._magnitude import block_sq_norms
from .block_prune import expand_segments, global_block_masks, layer_block_mask, segment_block_scores
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["GradualBlockPruneConfig", "gradual_block_prune", "narang_threshold", "cubic_sparsity"]


@dataclass(frozen=True)
class GradualBlockPruneConfig(PassConfig):
    """``ranking``: ``layer`` (every layer to ``sparsity``) or ``global`` (one ranking over all the
    selected layers; ``target`` schedule only). ``start``/``ramp``/``end``: steps of the schedule
    (``end`` 0 means a third of ``train.steps``, where pruning measured best at two budgets,
    BENCHMARKS.md; ``ramp`` 0 means a third of the way from start to end); ``freq``: steps between
    mask updates."""

    block: tuple[int, int] = (16, 16)
    schedule: Literal["target", "narang"] = "target"
    sparsity: float = 0.9
    start: int = 0
    ramp: int = 0
    end: int = 0
    freq: int = 10
    mult: float = 1.5
    percentile: float = 90.0
    score: Literal["max_abs", "mean_abs", "l2"] = "max_abs"
    ranking: Literal["layer", "global"] = "layer"
    balanced: bool = False
    cross_gates: bool = False
    group_lasso: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)

    def resolved(self) -> tuple[int, int, int]:
        """(start, ramp, end) with the defaults filled in."""
        end = self.end or max(self.start + 1, self.train.steps // 3)
        ramp = self.ramp or self.start + (end - self.start) // 3
        return self.start, ramp, end

    def validate(self, path: str) -> None:
        check_range(f"{path}.sparsity", self.sparsity, 0.0, 1.0)
        check_range(f"{path}.percentile", self.percentile, 0.0, 100.0, high_open=False)
        check_block(f"{path}.block", self.block)
        if self.freq < 1:
            raise RecipeError(f"{path}.freq", f"{self.freq} is invalid; must be >= 1")
        if self.mult <= 0 or self.group_lasso < 0:
            key = "mult" if self.mult <= 0 else "group_lasso"
            raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be positive")
        if self.ranking == "global" and self.schedule != "target":
            raise RecipeError(f"{path}.ranking", "global ranking needs schedule: target (the narang threshold is per layer)")
        start, ramp, end = self.resolved()
        if not 0 <= start < end <= self.train.steps:
            raise RecipeError(f"{path}.end", f"need 0 <= start ({start}) < end ({end}) <= train.steps ({self.train.steps})")
        if not start <= ramp < end:
            raise RecipeError(f"{path}.ramp", f"need start ({start}) <= ramp ({ramp}) < end ({end})")


def narang_threshold(t: int, q: float, start: int, ramp: int, end: int, freq: int, mult: float) -> float:
    """The block-pruning threshold eps at step ``t`` (docs/methods.md section 1, ``schedule: narang``)."""
    theta = 2 * q * freq / (2 * (ramp - start) + 3 * (end - ramp))
    phi = mult * theta
    if t < start:
        return 0.0
    if t < ramp:
        return theta * (t - start + 1) / freq
    t = min(t, end - 1)
    return (theta * (ramp - start + 1) + phi * (t - ramp + 1)) / freq


def cubic_sparsity(t: int, final: float, start: int, end: int) -> float:
    """Sparsity at step ``t`` of the cubic ramp from 0 at ``start`` to ``final`` at ``end``."""
    p = min(1.0, max(0.0, (t - start) / (end - start)))
    return final * (1.0 - (1.0 - p) ** 3)


class _Hooks(TrainHooks):
    def __init__(self, state, config: GradualBlockPruneConfig, targets):
        self.state, self.config, self.targets = state, config, targets
        self.start, self.ramp, self.end = config.resolved()
        self.step = 0  # the loop's current step (before_step), for the group-lasso window
        # Masks are parametrizations: install them (all kept) before the loop wraps the model in
        # DDP, so the module structure never changes while it trains.
        for t in targets:
            if state.mask(t) is None:
                state.set_mask(t, torch.ones(t.shape, dtype=torch.bool))
        # q of every layer, from the dense weights at the start (kept in the checkpoint)
        self.q = {t.name: float(torch.quantile(state.weight(t).abs().float().flatten()[:1_000_000], config.percentile / 100))
                  for t in targets}

    def state_dict(self):
        return {"q": self.q}

    def load_state_dict(self, state):
        self.q = dict(state["q"])

    def update_due(self, step: int) -> bool:
        return self.start <= step < self.end and ((step - self.start) % self.config.freq == 0 or step == self.end - 1)

    @torch.no_grad()
    def before_step(self, step):
        self.step = step
        if not self.update_due(step):
            return
        c = self.config
        weights = [self.state.weight(t) for t in self.targets]
        if c.schedule == "target":
            sparsity = cubic_sparsity(step + 1, c.sparsity, self.start, self.end)
            if c.ranking == "global":
                masks = global_block_masks(weights, self.targets, c.block, c.score, sparsity, c.balanced, c.cross_gates,
                                           [self.state.mask(t) for t in self.targets])
            else:
                masks = [layer_block_mask(w, t, c.block, c.score, sparsity, c.balanced, c.cross_gates)
                         for w, t in zip(weights, self.targets)]
        else:
            masks = []
            for w, t in zip(weights, self.targets):
                scores, sizes = segment_block_scores(w, t, c.block, c.score, c.cross_gates)
                eps = narang_threshold(step, self.q[t.name], self.start, self.ramp, self.end, c.freq, c.mult)
                masks.append(expand_segments(scores >= eps, sizes, t, c.block, c.cross_gates, w.shape))
        for t, mask in zip(self.targets, masks):
            self.state.set_mask(t, mask)
        self.state.sync_masks()

    def extra_loss(self, model):
        """``group_lasso * sum of block L2 norms`` of the live weights, while pruning (before ``end``)."""
        if not self.config.group_lasso or self.step >= self.end:
            return None
        c = self.config
        total = sum((block_sq_norms(self.state.weight_live(t), t, c.block, c.cross_gates) + 1e-12).sqrt().sum()
                    for t in self.targets)
        return c.group_lasso * total


@register_pass("gradual_block_prune", GradualBlockPruneConfig, trains=True)
def gradual_block_prune(state: CompressionState, config: GradualBlockPruneConfig, targets: list[Target]) -> PassResult:
    """Prune blocks on a schedule while fine-tuning (Narang et al.)."""
    result = PassResult()
    hooks = _Hooks(state, config, targets)
    history = fine_tune(state, config.train, hooks, f"gradual_block_prune ({config.schedule})")
    pattern = (BalancedBlock if config.balanced else Block)(*config.block)
    for t in targets:
        mask = state.mask(t)
        measured = 1.0 - float(mask.float().mean()) if mask is not None else 0.0
        if config.schedule == "narang":
            target_sparsity, notes = round(measured, 6), ["narang threshold schedule: the sparsity is its outcome"]
        elif config.ranking == "global":
            target_sparsity = round(measured, 6)
            notes = [f"global ranking: {config.sparsity:g} over all the selected layers together"]
        else:
            target_sparsity, notes = config.sparsity, []
        result.layers[t.name] = LayerUpdate(pattern, target_sparsity, notes=notes)
    result.metrics = {"history": history, "schedule": {"start": hooks.start, "ramp": hooks.ramp, "end": hooks.end}}
    return result
