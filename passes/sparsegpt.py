"""One-shot pruning with second-order weight reconstruction: SparseGPT.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
arXiv 2301.00774. Per layer, in forward order (each layer calibrated on the inputs of the model
whose earlier layers are already pruned; :mod:`compressor.passes._oneshot`):

1. record the layer's calibration inputs X (an LSTM/GRU's ``weight_ih_l{k}``: x_t or layer
   k-1's outputs; ``weight_hh_l{k}``: h_{t-1}; all time steps) and form ``H = X^T X`` in float64,
   damped by ``percdamp * mean(diag H)`` (raised tenfold, with a note, while the Cholesky
   factorisation fails; a layer that still fails stops the run with one line naming it);
2. choose the mask and update the remaining weights column block by column block (``blocksize``)
   with optimal brain surgeon steps from the upper Cholesky factor of ``H^-1``
   (:func:`compressor.solvers.sparsegpt.sparsegpt_prune`): ``pattern: unstructured`` prunes
   ``sparsity`` of every column block (over the block, ``ranking: layer``, as the reference
   implementation; or of every row in it, ``ranking: row``), ``pattern: nm`` keeps N of every M
   consecutive input columns per row, by the saliency ``w^2 / [H^-1]_jj^2``; with ``transposable:
   true`` each M-column strip is chosen when the sweep reaches it, by the transposable N:M solvers
   (``solver``) on the strip's saliencies (every M x M tile lies inside one strip, so the mask
   adapts to the updates of earlier columns, as the paper's N:M selection does); then (``refit``,
   the default) every row's kept weights are set to the exact least-squares optimum for the mask
   chosen (:func:`compressor.solvers.lstsq.masked_lstsq` with the ridge ``refit_damping``: the
   sweep's updates only flow to later columns, an approximation of it);
3. ``pattern: block`` couples columns far apart (a block row's count), so its mask is chosen once,
   before any update, on the OBS cost of removing each row's run of block-width columns together,
   ``w_B [(H^-1)_BB]^-1 w_B^T`` (:func:`compressor.solvers.sparsegpt.obs_group_saliency`), summed
   over the block's rows (``sparsity`` of the blocks pruned per layer; ``balanced``: the same count
   in every block row; blocks stay inside one LSTM/GRU gate unless ``cross_gates``), and the kept
   weights are the least-squares optimum for it.

``allocation: owl | sensitivity`` shares an unstructured ``sparsity`` among the layers instead of
giving each the same (:mod:`compressor.passes._allocation`): each layer then prunes exactly its count.

The report has, per layer, the calibration rows and columns (a note when rows < columns), the
damping used, and the relative output error on the calibration inputs of the kept weights before
the update (the original values under the chosen mask), after it, and of the magnitude mask of
the same pattern and layer sparsity, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..config import check_block, check_range, check_solver
from ..errors import CompressorError, RecipeError
from ..patterns import NM, BalancedBlock, Block, Unstructured
from ..solvers import nm_mask, topk_mask, transposable_nm_mask
from ..solvers.lstsq import SingularGramError, masked_lstsq
from ..solvers.sparsegpt import (HessianError, SparseGPTResult, hessian, obs_group_saliency, output_error,
                                 sparsegpt_prune)
from .block_prune import layer_block_mask
from ..tasks import TaskConfig
from ._allocation import OWL_LAMBDA, OWL_THRESHOLD, allocate, check_allocation
from ._magnitude import keep_count
from ._oneshot import calibrated_stages, rows_note
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["OneShotConfig", "SparseGPTConfig", "sparsegpt", "check_pattern"]


def check_pattern(config, path: str) -> None:
    """Checks shared by the one-shot passes: sparsity, N:M, calibration rows, layer-wise allocation."""
    check_range(f"{path}.sparsity", config.sparsity, 0.0, 1.0)
    if config.pattern == "nm":
        if config.m < 2:
            raise RecipeError(f"{path}.m", f"{config.m} is invalid; m must be at least 2")
        if not 0 < config.n < config.m:
            raise RecipeError(f"{path}.n", f"{config.n} is invalid; n must satisfy 0 < n < m (m = {config.m})")
    if config.rows < 1:
        raise RecipeError(f"{path}.rows", f"{config.rows} is invalid; must be >= 1")
    check_allocation(config, path)


@dataclass(frozen=True)
class OneShotConfig(PassConfig):
    """Settings shared by the calibration-based one-shot passes (``sparsegpt``, ``wanda``): the pattern
    (``sparsity`` of ``unstructured``, or ``n`` of every ``m`` inputs), ``rows`` of calibration inputs
    per layer recorded on ``calibration`` (``sequential``: from the model whose earlier layers are
    already pruned), and the layer-wise ``allocation`` of an unstructured budget."""

    pattern: Literal["unstructured", "nm"] = "unstructured"
    sparsity: float = 0.5
    n: int = 2
    m: int = 4
    rows: int = 16384
    sequential: bool = True
    calibration: TaskConfig = field(default_factory=lambda: TaskConfig(name="auto", batch_size=16))
    allocation: Literal["uniform", "owl", "sensitivity"] = "uniform"
    owl_threshold: float = OWL_THRESHOLD
    owl_lambda: float = OWL_LAMBDA
    sensitivity: str | None = None

    def validate(self, path: str) -> None:
        check_pattern(self, path)


@dataclass(frozen=True)
class SparseGPTConfig(OneShotConfig):
    """``pattern``: ``unstructured`` (``sparsity`` of each layer, chosen per column block, over the
    block or per row: ``ranking``), ``nm`` (``n`` of every ``m`` input columns; ``sparsity`` unused;
    ``transposable``: every m x m tile N:M along rows and columns, each m-column strip solved by
    ``solver`` when the sweep reaches it) or ``block``
    (``block`` [rows, cols] blocks, ``sparsity`` of them; ``balanced``, ``cross_gates`` as ``block_prune``).
    ``blocksize``: columns per lazy-update block. ``percdamp``: the OBS sweep's damping relative to
    mean(diag H). ``refit`` (default on): after the OBS sweep (unstructured, N:M, transposable N:M), set
    each row's kept weights to the exact least-squares optimum for the mask it chose (the sweep's
    updates only flow to later columns; measured: MiniLM 50% cosine 0.899 -> 0.913, 2:4 0.839 -> 0.860;
    built-in LM 2:4 perplexity 3.403 -> 3.294). ``refit: false`` is the paper's algorithm.
    ``refit_damping``: the least-squares ridge (refit and block weights) relative to mean(diag H), as
    ``nm_convert``'s ``damping`` (the sweep's damping instead where the sweep had to raise it): 1e-4
    beat ``percdamp``'s 0.01 on every model and pattern measured with 16,384 calibration rows
    (BENCHMARKS.md); with far fewer rows per input a larger ridge can generalise better.
    ``rows``: calibration rows (positions) per layer. ``sequential``: calibrate each layer on the
    model with the earlier layers already pruned (the paper), else on the dense model.
    ``calibration``: the task whose batches are recorded. ``allocation``: how the ``sparsity`` budget
    is shared among the layers (``uniform``, ``owl`` with ``owl_threshold`` and ``owl_lambda``, or
    ``sensitivity`` from the curves file ``sensitivity``; :mod:`compressor.passes._allocation`)."""

    pattern: Literal["unstructured", "nm", "block"] = "unstructured"
    ranking: Literal["layer", "row"] = "layer"
    transposable: bool = False
    solver: str = "exact"
    block: tuple[int, int] = (16, 16)
    balanced: bool = False
    cross_gates: bool = False
    blocksize: int = 128
    percdamp: float = 0.01
    refit: bool = True
    refit_damping: float = 1e-4

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.blocksize < 1:
            raise RecipeError(f"{path}.blocksize", f"{self.blocksize} is invalid; must be >= 1")
        check_range(f"{path}.percdamp", self.percdamp, 0.0, 10.0)
        check_range(f"{path}.refit_damping", self.refit_damping, 0.0, 10.0)
        if self.pattern == "block":
            check_block(f"{path}.block", self.block)
        if self.transposable and self.pattern != "nm":
            raise RecipeError(f"{path}.transposable", f"applies to pattern: nm only (pattern is {self.pattern!r})")
        check_solver(f"{path}.solver", self.solver, self.n, self.m, self.transposable)


def magnitude_mask(weight: torch.Tensor, config, budget=None, target=None) -> torch.Tensor:
    """The magnitude mask of the same pattern and layer sparsity (the reference the report compares
    against); ``budget``: the layer's share under a layer-wise allocation; ``target``: the layer
    (block patterns keep blocks inside one gate)."""
    if config.pattern == "nm":
        if getattr(config, "transposable", False):
            return transposable_nm_mask(weight, config.n, config.m, method=config.solver)
        return nm_mask(weight, config.n, config.m)
    if config.pattern == "block":
        return _block_mask(weight.abs(), config, target)
    if budget is not None:
        return topk_mask(weight.abs(), weight.numel() - budget.count)
    return topk_mask(weight.abs(), keep_count(weight.numel(), config.sparsity, at_least=0))


def _block_mask(scores: torch.Tensor, config, target) -> torch.Tensor:
    """Blocks of ``config.block`` ranked by their mean score (gate-aware, as ``block_prune``)."""
    return layer_block_mask(scores, target, config.block, "mean_abs", config.sparsity, config.balanced,
                            config.cross_gates)


def _block_obs_mask(weight: torch.Tensor, h: torch.Tensor, config, target, prior) -> torch.Tensor:
    """A block pattern's mask, chosen before any update on the OBS saliencies (an earlier mask's
    pruned weights score zero, so they stay pruned where the pattern allows)."""
    # the cost of removing each row's run of block-width columns together (the OBS cost of the
    # group, which accounts for correlated inputs), summed over the block's rows by the block ranking
    saliency = obs_group_saliency(weight, h, config.block[1], config.percdamp)
    if prior is not None:
        saliency = saliency.masked_fill(~prior.to(torch.bool), 0.0)
    return _block_mask(saliency, config, target)


def _pattern(config):
    if config.pattern == "nm":
        return NM(config.n, config.m, config.transposable)
    if config.pattern == "block":
        return (BalancedBlock if config.balanced else Block)(*config.block)
    return Unstructured()


@register_pass("sparsegpt", SparseGPTConfig, kinds=("linear", "lstm", "gru", "rnn"), needs_reference=True)
def sparsegpt(state: CompressionState, config: SparseGPTConfig, targets: list[Target]) -> PassResult:
    """SparseGPT (Frantar & Alistarh, arXiv 2301.00774): OBS mask selection and weight update per layer."""
    c = config
    result = PassResult()
    nm = c.pattern == "nm"
    pattern = _pattern(c)
    plan, result.notes = allocate(state, c, targets, "sparsegpt")
    for group, inputs in calibrated_stages(state, c, targets, result):
        for t in group:
            w_ref = state.weight(t).clone()
            h = hessian(inputs[t.param_name])
            n_rows = inputs[t.param_name].shape[0]
            budget = plan.get(t.name)
            try:
                ridge = c.refit_damping
                if c.pattern == "block":
                    mask = _block_obs_mask(w_ref, h, c, t, state.mask(t))
                    solved = SparseGPTResult(masked_lstsq(h, w_ref, mask, ridge), mask, c.percdamp)
                else:
                    solved = sparsegpt_prune(w_ref, h, sparsity=c.sparsity, n=c.n if nm else 0, m=c.m,
                                             ranking=c.ranking, blocksize=c.blocksize, percdamp=c.percdamp,
                                             prior=state.mask(t), prune=budget.count if budget else None,
                                             transposable=c.transposable, solver=c.solver)
                    if c.refit:
                        # a Hessian whose factorisation needed more damping gets at least as much ridge
                        if solved.damping > c.percdamp:
                            ridge = max(ridge, solved.damping)
                        solved.weight = masked_lstsq(h, w_ref, solved.mask, ridge)
            except (HessianError, SingularGramError) as exc:
                raise CompressorError(f"sparsegpt: layer {t.name} ({n_rows} calibration rows x {t.in_features} "
                                      f"columns): {exc}") from None
            metrics = {
                "calibration_rows": n_rows, "columns": t.in_features, "damping": solved.damping,
                **({"least_squares_ridge": ridge} if c.refit or c.pattern == "block" else {}),
                "reconstruction_error_before": output_error(h, w_ref, w_ref * solved.mask),
                "reconstruction_error_after": output_error(h, w_ref, solved.weight),
                "reconstruction_error_magnitude_mask": output_error(h, w_ref, w_ref * magnitude_mask(w_ref, c, budget, t)),
                **(budget.metrics if budget else {}),
            }
            notes = [n for n in (budget.note if budget else None, rows_note(n_rows, t.in_features), *solved.notes) if n]
            ridge_note = f", least-squares ridge {ridge:g}" if c.refit or c.pattern == "block" else ""
            # what set the saved weights: the OBS sweep, its least-squares refit, or (blocks) least squares alone
            how = "least squares" if c.pattern == "block" else "OBS update, least-squares refit" if c.refit else "OBS update"
            notes.append(f"sparsegpt: {n_rows} calibration rows x {t.in_features} columns, damping {solved.damping:g}"
                         f"{ridge_note}; "
                         f"calibration output error {metrics['reconstruction_error_before']:.3g} with the mask alone -> "
                         f"{metrics['reconstruction_error_after']:.3g} with the saved weights ({how}) (magnitude mask: "
                         f"{metrics['reconstruction_error_magnitude_mask']:.3g})")
            with torch.no_grad():
                state.original(t).copy_(solved.weight)
            state.set_mask(t, solved.mask)
            result.layers[t.name] = LayerUpdate(pattern, 1 - c.n / c.m if nm else budget.sparsity if budget else c.sparsity,
                                                notes=notes)
            result.metrics[t.name] = metrics
    return result
