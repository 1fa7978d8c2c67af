"""Unstructured -> N:M or transposable N:M conversion with layer-wise reconstruction.

Hubara et al. (arXiv 2102.08124; docs/methods.md section 3, "AdaPrune"). For every selected layer:

1. choose the mask: plain N:M along the input dimension, or transposable N:M (every M x M tile
   keeps N per row and per column, so W^T is N:M too) with a solver from
   :mod:`compressor.solvers` (``exact`` or ``greedy``, ...). An existing mask (an
   unstructured-sparse model) is passed as the solvers' ``prior``: kept weights are preferred.
   The solvers keep the largest scores: ``score: magnitude`` (default) scores ``|W_ij|``;
   ``score: activation`` scores ``|W_ij| * ||X_j||`` with the calibration inputs' column norms
   (the activation-aware criterion of Sun et al., "Wanda", arXiv 2306.11695: a weight matters in
   proportion to the input that it multiplies; not part of Hubara et al., offered because it is
   cheap once X is recorded). Weights whose inputs no hook sees fall back to magnitude. Scores
   are taken on the ORIGINAL weights (the model before any pass), so a weight an earlier pass
   removed can come back when the pattern needs it: the earlier mask is only the solvers' prior,
   and the result is exactly the pattern named (``keep_existing: true`` instead keeps only the
   intersection with the earlier mask: sparser than N:M, some groups with fewer than N);
2. record calibration inputs X of the layer from the original (dense) model, one module at a
   time (:mod:`compressor.calibration`);
3. reconstruct: minimise ``||X W^T - X (S * W')^T||^2`` over the kept weights W' (W: the original
   model's weight, so the target is the original layer's output), with Adam
   (``reconstruct: adam``, the paper's method) or exactly per output row by least squares on
   the Gram matrix (``reconstruct: lstsq``; fast, with ``damping`` for stability), or not at all;
4. optionally correct the bias by the mean output error; re-estimate BatchNorm statistics.

The report carries, per layer, the kept magnitude of the final mask relative to plain N:M (both on
the original weights) and the relative reconstruction error against the original layer: of the
weights as they came in (``reconstruction_error_incoming``, when an earlier pass had masked them),
of the mask alone on the original values, and of the weights saved (and, with ``score: activation``, the error of
the magnitude-only mask of the same pattern, ``reconstruction_error_magnitude_mask``, which costs
one more mask solve per layer). Layers narrower than M, and F.linear weights (whose inputs no hook
can see), are handled as documented in the report notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn

from compressor.calibration import call_model, task_batches
from ..config import check_solver
from ..errors import RecipeError
from ..patterns import NM
from ..solvers import nm_mask, transposable_nm_mask
from ..solvers.lstsq import SingularGramError, masked_lstsq
from ..solvers.quality import kept_magnitude
from ..solvers.sparsegpt import hessian, output_error
from ..tasks import TaskConfig
from ._oneshot import recorder, stage_of, stages
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["NMConvertConfig", "nm_convert", "reconstruct_adam", "reconstruct_lstsq", "relative_error", "SCORES"]

#: Mask criteria of ``nm_convert`` (see the module docstring).
SCORES = ("magnitude", "activation")


@dataclass(frozen=True)
class NMConvertConfig(PassConfig):
    """``rows``: calibration rows (positions) per layer; ``iterations``/``lr``/``batch``: Adam;
    ``damping``: ridge term of the least-squares solve, relative to the Gram diagonal's mean;
    ``keep_existing``: keep only weights an earlier mask also kept (sparser than N:M) instead of
    letting the pattern bring removed weights back. ``sequential``: record each layer's inputs X from
    the model whose earlier layers are already converted (as SparseGPT does), else from the dense
    model (as AdaPrune does); either way the target is the original layer's output on X."""

    n: int = 2
    m: int = 4
    transposable: bool = True
    solver: str = "exact"
    use_prior: bool = True
    score: Literal["magnitude", "activation"] = "magnitude"
    reconstruct: Literal["adam", "lstsq", "none"] = "adam"
    iterations: int = 300
    lr: float = 1e-3
    batch: int = 256
    rows: int = 4096
    damping: float = 1e-4
    bias_correction: bool = False
    keep_existing: bool = False
    sequential: bool = True
    calibration: TaskConfig = field(default_factory=lambda: TaskConfig(name="auto", batch_size=16))

    def validate(self, path: str) -> None:
        if self.m < 2:
            raise RecipeError(f"{path}.m", f"{self.m} is invalid; m must be at least 2")
        if not 0 < self.n < self.m:
            raise RecipeError(f"{path}.n", f"{self.n} is invalid; n must satisfy 0 < n < m (m = {self.m})")
        if self.score not in SCORES:
            raise RecipeError(f"{path}.score", f"{self.score!r} is not a score; choose from {', '.join(SCORES)}")
        check_solver(f"{path}.solver", self.solver, self.n, self.m, self.transposable)
        for key in ("iterations", "batch", "rows"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be >= 1")
        if self.lr <= 0 or self.damping < 0:
            key = "lr" if self.lr <= 0 else "damping"
            raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid")


def relative_error(x: torch.Tensor, w_ref: torch.Tensor, w: torch.Tensor) -> float:
    """||X W_ref^T - X W^T|| / ||X W_ref^T|| (Frobenius)."""
    ref = x @ w_ref.T
    return float((ref - x @ w.T).norm() / ref.norm().clamp_min(1e-30))


def reconstruct_adam(x, w_ref, mask, iterations, lr, batch, seed=0, init=None) -> torch.Tensor:
    """Adam on the kept weights, minimising the output error against ``x @ w_ref.T`` on mini-batches
    of rows, starting from ``init * mask`` (default ``w_ref * mask``)."""
    w = ((w_ref if init is None else init) * mask).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    target = x @ w_ref.T  # (N, out)
    for _ in range(iterations):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        loss = (x[idx] @ (w * mask).T - target[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (w.detach() * mask)


def reconstruct_lstsq(x, w_ref, mask, damping, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row least squares on the Gram matrix G = X^T X (:func:`compressor.solvers.lstsq.masked_lstsq`):
    each row's kept weights minimise ``||X w_ref - X w||^2 + lambda ||w_ref - w||^2`` over its kept
    columns (lambda: ``damping`` times the mean of diag G). ``gram``: G (any positive scale, as
    :func:`compressor.solvers.sparsegpt.hessian` gives it) when the caller has it."""
    gram = hessian(x) if gram is None else gram  # (in, in), float64
    try:
        return masked_lstsq(gram, w_ref, mask, damping)
    except SingularGramError as exc:
        raise ValueError(f"nm_convert: {exc}; {x.shape[0]} calibration rows for {gram.shape[0]} inputs: "
                         "set damping > 0 or record more calibration rows") from None


def _calibration_batches(state, config):
    """Calibration inputs of the pass's task (:func:`compressor.calibration.task_batches`)."""
    return task_batches(state.task(config.calibration))


@register_pass("nm_convert", NMConvertConfig, kinds=("linear", "functional", "lstm", "gru", "rnn"), needs_reference=True,
               regrows=True)
def nm_convert(state: CompressionState, config: NMConvertConfig, targets: list[Target]) -> PassResult:
    """N:M / transposable N:M masks, then per-layer reconstruction on calibration data."""
    c = config
    result = PassResult()
    pattern = NM(c.n, c.m, c.transposable)
    selected = []
    for t in targets:
        if t.in_features < c.m or (c.transposable and t.out_features < c.m):
            result.skipped[t.name] = f"shape {list(t.shape)} is narrower than m={c.m}: left as it was"
            continue
        selected.append(t)
    groups = stages(selected)
    needs_inputs = c.reconstruct != "none" or c.score == "activation"
    hookable = [(p, g) for p, g in groups if not any(t.kind == "functional" for t in g)] if needs_inputs else []
    rec = recorder(state, hookable, c.calibration, c.rows, sequential=c.sequential)
    for module_path, group in groups:
        inputs = rec.inputs(stage_of(module_path, group)) if (module_path, group) in hookable else {}
        for t in group:
            current = state.weight(t).clone()  # the effective weight as it came in (masked by earlier passes)
            prior = state.mask(t)
            prior = None if prior is None else prior.clone()  # the live buffer changes when the new mask is set
            w_orig = _original_weight(state, t).to(current.dtype)  # the reconstruction target
            # weights an earlier pass kept start from their current values, the others from the original model's
            start = current if prior is None else torch.where(prior.to(current.device), current, w_orig)
            x = inputs.get(t.param_name)
            x = None if x is None else x.to(current.dtype)
            notes: list[str] = []
            solver_prior = prior if c.use_prior else None
            mask = _choose_mask(c, start, solver_prior)
            magnitude_mask = None
            if c.score == "activation":
                if x is not None:
                    magnitude_mask, mask = mask, _choose_mask(c, start.abs() * x.norm(dim=0), solver_prior)
                else:
                    notes.append("score: activation needs the layer's inputs, which no hook sees: magnitude used")
            if prior is not None and c.keep_existing:
                mask = mask & prior.to(mask.device)
                if magnitude_mask is not None:
                    magnitude_mask = magnitude_mask & prior.to(mask.device)
            plain = nm_mask(start, c.n, c.m)
            metrics = {"kept_magnitude_vs_plain": kept_magnitude(start, mask) / max(kept_magnitude(start, plain), 1e-30)}
            new_w = start * mask
            # X^T X / N in float64: every error figure below (from it, 10x less work than from the rows)
            # and the lstsq fit use it
            gram = None if x is None else hessian(x)
            if x is not None:
                if prior is not None:
                    metrics["reconstruction_error_incoming"] = output_error(gram, w_orig, current)
                metrics["reconstruction_error_before"] = output_error(gram, w_orig, new_w)
                if magnitude_mask is not None:
                    metrics["reconstruction_error_magnitude_mask"] = output_error(gram, w_orig, start * magnitude_mask)
                if c.reconstruct == "adam":
                    new_w = reconstruct_adam(x, w_orig, mask, c.iterations, c.lr, c.batch, seed=state.recipe.seed,
                                             init=start)
                elif c.reconstruct == "lstsq":
                    new_w = reconstruct_lstsq(x, w_orig, mask, c.damping, gram=gram)
                if c.bias_correction:
                    _correct_bias(state, t, x, w_orig, new_w, notes)
            elif c.reconstruct != "none":
                notes.append("no reconstruction: F.linear inputs are not visible to hooks")
            with torch.no_grad():
                state.original(t).copy_(new_w)
            state.set_mask(t, mask, intersect=False)  # the pattern may bring back weights an earlier pass removed
            saved = state.weight(t)  # what finalize will write: every figure below is of these weights
            if x is not None:
                metrics["reconstruction_error_after"] = output_error(gram, w_orig, saved)
            if prior is not None:
                _prior_notes(notes, metrics, c, prior.to(mask.device), mask, saved)
            notes.append(_summary(metrics, c))  # the per-layer figures, in the table's and the page's notes
            result.layers[t.name] = LayerUpdate(pattern, 1 - c.n / c.m, notes=notes)
            result.metrics[t.name] = metrics
    result.notes.extend(rec.notes)
    _reestimate_norm_stats(state, c)
    return result


def _original_weight(state, target) -> torch.Tensor:
    """The weight of ``target`` in the model before any pass (``state.reference``)."""
    if state.reference is None:
        return state.original(target).detach().clone()
    return getattr(state.reference.get_submodule(target.module_path), target.param_name).detach()


def _prior_notes(notes: list[str], metrics: dict, c: NMConvertConfig, prior: torch.Tensor, mask: torch.Tensor,
                 saved: torch.Tensor) -> None:
    """Say what became of an earlier pass's mask: weights brought back, or (keep_existing) the sparser result."""
    revived = int((mask & ~prior).sum())
    dropped = int((prior & ~mask).sum())
    sparsity = 1.0 - int((saved != 0).sum()) / saved.numel()
    metrics.update({"revived": revived, "dropped": dropped, "sparsity": sparsity})
    if c.keep_existing:
        notes.append(
            f"keep_existing: only weights the earlier mask also kept: {sparsity:.1%} sparse, not "
            f"{1 - c.n / c.m:.0%}; groups may keep fewer than {c.n} of {c.m}")
    elif revived:
        notes.append(
            f"{revived} weights an earlier pass removed came back ({c.n}:{c.m} needs them; {dropped} it kept were "
            f"removed), their values {'from reconstruction against' if c.reconstruct != 'none' else 'those of'} "
            f"the original model")


def _summary(metrics: dict[str, float], c: NMConvertConfig) -> str:
    text = f"keeps {metrics['kept_magnitude_vs_plain']:.2%} of the magnitude plain {c.n}:{c.m} keeps"
    if "reconstruction_error_incoming" in metrics:
        text += f"; calibration output error {metrics['reconstruction_error_incoming']:.3g} as the weights came in"
    if "reconstruction_error_before" in metrics:
        before, after = metrics["reconstruction_error_before"], metrics["reconstruction_error_after"]
        text += f"; calibration output error {before:.3g} with the mask alone"
        text += f" -> {after:.3g} after {c.reconstruct} reconstruction" if c.reconstruct != "none" else " (no reconstruction)"
    return text


def _choose_mask(c: NMConvertConfig, scores: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """The N:M (or transposable N:M) mask keeping the largest ``|scores|``."""
    if c.transposable:
        return transposable_nm_mask(scores, c.n, c.m, method=c.solver, prior=prior)
    return nm_mask(scores, c.n, c.m, prior=prior)


def _correct_bias(state, target, x, w_ref, new_w, notes: list[str]) -> None:
    module = state.model.get_submodule(target.module_path)
    bias = getattr(module, target.param_name.replace("weight", "bias"), None)
    if isinstance(bias, nn.Parameter):
        with torch.no_grad():
            bias.add_((x @ (w_ref - new_w).T).mean(0).to(bias.dtype))
        notes.append("bias corrected by the mean output error")


@torch.no_grad()
def _reestimate_norm_stats(state, config) -> None:
    norms = [m for m in state.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was = state.model.training
    state.model.train()
    batches = _calibration_batches(state, config)
    for _ in range(8):
        call_model(state.model, next(batches))
    state.model.train(was)
