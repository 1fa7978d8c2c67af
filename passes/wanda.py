"""One-shot pruning by weights and activations: Wanda.

Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", arXiv 2306.11695.
Each weight is scored ``|W_ij| * ||X_j||_2``, with ``X_j`` the j-th input column over the layer's
calibration rows, and the scores are compared within each output row: ``pattern: unstructured``
prunes ``sparsity`` of every row, ``pattern: nm`` keeps N of every M consecutive inputs per row.
No weight is updated. Layers are calibrated in forward order on the model whose earlier layers are
already pruned (``sequential``, as the paper's code does), with the same recording as ``sparsegpt``
(:mod:`compressor.passes._oneshot`; LSTM/GRU ``weight_hh``: h_{t-1} over every time step), and the
same layer-wise ``allocation`` (:mod:`compressor.passes._allocation`).

The report has, per layer, the calibration rows and the relative output error on the calibration
inputs of the Wanda mask and of the magnitude mask of the same pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..patterns import NM, Unstructured
from ..solvers.sparsegpt import hessian, output_error, wanda_mask
from ._allocation import allocate
from ._oneshot import calibrated_stages, rows_note
from .registry import LayerUpdate, PassResult, register_pass
from .sparsegpt import OneShotConfig, magnitude_mask

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["WandaConfig", "wanda"]


@dataclass(frozen=True)
class WandaConfig(OneShotConfig):
    """``pattern``: ``unstructured`` (``sparsity`` of every output row) or ``nm`` (``n`` of every ``m``
    inputs per row). ``rows``, ``sequential``, ``calibration``, ``allocation`` (with ``owl_threshold``,
    ``owl_lambda``, ``sensitivity``): as for ``sparsegpt``; under ``owl`` or ``sensitivity`` each layer
    prunes its share of the budget, spread over its rows as evenly as it goes."""


@register_pass("wanda", WandaConfig, kinds=("linear", "lstm", "gru", "rnn"), needs_reference=True)
def wanda(state: CompressionState, config: WandaConfig, targets: list[Target]) -> PassResult:
    """Wanda (Sun et al., arXiv 2306.11695): prune the lowest |W| x ||X_j|| of every output row."""
    c = config
    result = PassResult()
    nm = c.pattern == "nm"
    pattern = NM(c.n, c.m) if nm else Unstructured()
    plan, result.notes = allocate(state, c, targets, "wanda")
    for group, inputs in calibrated_stages(state, c, targets, result):
        for t in group:
            w = state.weight(t).clone()
            x = inputs[t.param_name]
            budget = plan.get(t.name)
            mask = wanda_mask(w, x.double().norm(dim=0), sparsity=c.sparsity, n=c.n if nm else 0, m=c.m,
                              prior=state.mask(t), prune=budget.count if budget else None)
            h = hessian(x)
            metrics = {"calibration_rows": x.shape[0], "columns": t.in_features,
                       "reconstruction_error_after": output_error(h, w, w * mask),
                       "reconstruction_error_magnitude_mask": output_error(h, w, w * magnitude_mask(w, c, budget)),
                       **(budget.metrics if budget else {})}
            notes = [n for n in (budget.note if budget else None, rows_note(x.shape[0], t.in_features)) if n]
            notes.append(f"wanda: {x.shape[0]} calibration rows; calibration output error "
                         f"{metrics['reconstruction_error_after']:.3g} (magnitude mask: "
                         f"{metrics['reconstruction_error_magnitude_mask']:.3g})")
            state.set_mask(t, mask)
            result.layers[t.name] = LayerUpdate(pattern, 1 - c.n / c.m if nm else budget.sparsity if budget else c.sparsity,
                                                notes=notes)
            result.metrics[t.name] = metrics
    return result
