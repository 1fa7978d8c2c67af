"""Layer-wise sparsity allocation for the one-shot passes (``sparsegpt``, ``wanda``): ``allocation:``.

The pass's ``sparsity`` is one budget over all the layers it selects (the fraction of their weights
removed, each layer counted by its size); the allocation chooses how much of it each layer takes:

- ``uniform`` (default): every layer ``sparsity`` (each row or column block rounded by the solver);
- ``owl``: Outlier Weighed Layerwise sparsity (Yin et al., arXiv 2310.05175): layers with more
  Wanda-score outliers keep more weights (:func:`compressor.solvers.allocation.owl_sparsities`);
- ``sensitivity``: the least predicted loss on per-layer curves measured by ``compress sensitivity``
  (:func:`compressor.solvers.allocation.sensitivity_sparsities`).

``owl`` and ``sensitivity`` give every layer a whole number of weights to prune, the total exactly
``round(sparsity * selected weights)`` (:func:`compressor.solvers.allocation.budget_counts`), and the
solvers prune exactly that many (their ``prune`` argument).

OWL's outlier ratios are computed before any layer is pruned, from the calibration inputs of the
dense reference model (one recording of every stage, :func:`compressor.passes._oneshot.recorder`
with ``sequential=False``: block by block along a stack of blocks), as the paper's code does: the allocation must be known before the first
layer is pruned, and sequential inputs of a later layer exist only once the earlier ones are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_range
from ..errors import CompressorError, RecipeError
from ..solvers.allocation import budget_counts, outlier_ratio, owl_sparsities, sensitivity_sparsities
from ..solvers.sparsegpt import wanda_scores
from ._oneshot import recorder, stage_of, stages

__all__ = ["ALLOCATIONS", "LayerBudget", "check_allocation", "allocate", "OWL_THRESHOLD", "OWL_LAMBDA"]

ALLOCATIONS = ("uniform", "owl", "sensitivity")
#: the paper's defaults: M (outliers are scores above M times the layer's mean) and lambda
OWL_THRESHOLD = 5.0
OWL_LAMBDA = 0.08
_MAKE_CURVES = "compress sensitivity --recipe RECIPE --out DIR"


@dataclass
class LayerBudget:
    """One layer's share of the budget: weights to prune, and what the report says about it."""

    count: int
    size: int
    note: str
    metrics: dict = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.count / self.size


def check_allocation(config, path: str) -> None:
    """Recipe-load checks of ``allocation``, ``owl_threshold``, ``owl_lambda`` and ``sensitivity``."""
    allocation = config.allocation
    if allocation != "uniform" and config.pattern != "unstructured":
        why = ("every layer keeps n of every m weights" if config.pattern == "nm"
               else "whole blocks are pruned, not a count of weights")
        raise RecipeError(f"{path}.allocation", f"{allocation!r} applies to unstructured sparsity only; with "
                          f"pattern: {config.pattern} {why} (remove allocation, or use pattern: unstructured)")
    check_range(f"{path}.owl_threshold", config.owl_threshold, 0.0, 1e6, low_open=True)
    check_range(f"{path}.owl_lambda", config.owl_lambda, 0.0, 1.0)
    if allocation != "owl":
        for key, default in (("owl_threshold", OWL_THRESHOLD), ("owl_lambda", OWL_LAMBDA)):
            if getattr(config, key) != default:
                raise RecipeError(f"{path}.{key}", f"only used with allocation: owl (allocation is {allocation!r})")
    if allocation == "sensitivity" and not config.sensitivity:
        raise RecipeError(f"{path}.sensitivity", f"allocation: sensitivity needs measured curves: make them with "
                          f"`{_MAKE_CURVES}` and set sensitivity: DIR/sensitivity.json")
    if config.sensitivity and allocation != "sensitivity":
        raise RecipeError(f"{path}.sensitivity", f"only used with allocation: sensitivity (allocation is {allocation!r})")
    if config.sensitivity:
        from ..sensitivity import read_curves

        try:
            read_curves(config.sensitivity)
        except CompressorError as exc:
            raise RecipeError(f"{path}.sensitivity", f"{exc}") from None


def allocate(state, config, targets, pass_name: str) -> tuple[dict[str, LayerBudget], list[str]]:
    """Each target's budget under ``config.allocation`` ({} for ``uniform``: the solvers use ``sparsity``),
    and notes for the pass. Runs before the pass changes any layer."""
    if config.allocation == "uniform":
        return {}, []
    sizes = [t.shape[0] * t.shape[1] for t in targets]
    budget = config.sparsity
    if config.allocation == "owl":
        ratios = _outlier_ratios(state, config, targets)
        sparsities = owl_sparsities([ratios[t.name] for t in targets], sizes, budget, config.owl_lambda)
        counts = budget_counts(sparsities, sizes, budget)
        plan = {t.name: LayerBudget(k, n, f"allocation owl: {ratios[t.name]:.3%} of its Wanda scores above "
                                          f"{config.owl_threshold:g}x their mean -> {k / n:.2%} of this layer pruned "
                                          f"(budget {budget:.2%} over {len(targets)} layers, lambda {config.owl_lambda:g})",
                                    {"outlier_ratio": ratios[t.name], "allocated_sparsity": k / n})
                for t, k, n in zip(targets, counts, sizes)}
        notes = [f"allocation owl over {len(targets)} layers: outlier ratios from the dense model's calibration "
                 f"inputs, M={config.owl_threshold:g}, lambda={config.owl_lambda:g}"]
    else:
        from ..sensitivity import read_curves, layer_costs

        curves = read_curves(config.sensitivity)
        missing = [t.name for t in targets if t.name not in curves["layers"]]
        if missing:
            raise CompressorError(f"sensitivity: {config.sensitivity} has no curve for {', '.join(missing[:5])}"
                                  f"{' ...' if len(missing) > 5 else ''}; measure this pass's layers with `{_MAKE_CURVES}`")
        for t, n in zip(targets, sizes):
            if curves["layers"][t.name]["size"] != n:
                raise CompressorError(f"sensitivity: the curve of {t.name} in {config.sensitivity} was measured on "
                                      f"{curves['layers'][t.name]['size']} weights, the layer has {n}: another model")
        costs = layer_costs(curves)
        try:
            sparsities = sensitivity_sparsities([costs[t.name] for t in targets], sizes, budget)
        except ValueError as exc:
            raise CompressorError(f"sensitivity: {exc} ({config.sensitivity})") from None
        counts = budget_counts(sparsities, sizes, budget)
        plan = {t.name: LayerBudget(k, n, f"allocation sensitivity: {k / n:.2%} of this layer pruned at the least "
                                          f"predicted {curves['metric']} over {len(targets)} layers (budget {budget:.2%}; "
                                          f"curves {config.sensitivity})", {"allocated_sparsity": k / n})
                for t, k, n in zip(targets, counts, sizes)}
        notes = [f"allocation sensitivity over {len(targets)} layers from {config.sensitivity} "
                 f"({curves['metric']}, measured with {curves['pass']})"]
        if curves["pass"] != pass_name:
            notes.append(f"the curves in {config.sensitivity} were measured with {curves['pass']}, not {pass_name}")
    pruned, total = sum(b.count for b in plan.values()), sum(sizes)
    notes.append(f"{pruned} of {total} weights pruned ({pruned / total:.4%}; budget {budget:.4%})")
    return plan, notes


def _outlier_ratios(state, config, targets) -> dict[str, float]:
    """OWL's outlier ratio of every target: its Wanda scores ``|W| * ||X_j||`` with X the dense model's
    calibration inputs (the weights as they are now, before this pass)."""
    ratios = {}
    groups = stages(targets)
    rec = recorder(state, groups, config.calibration, config.rows, sequential=False)
    for module_path, group in groups:
        inputs = rec.inputs(stage_of(module_path, group))
        for t in group:
            scores = wanda_scores(state.weight(t), inputs[t.param_name].double().norm(dim=0))
            ratios[t.name] = outlier_ratio(scores, config.owl_threshold)
    return ratios
