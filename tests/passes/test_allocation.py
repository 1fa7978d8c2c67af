"""allocation: owl | sensitivity on sparsegpt and wanda: per-layer sparsities against the OWL formula
computed here in numpy from the layers' own calibration inputs, the budget counted on the saved masks,
the report rows, and the recipe errors."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
import compressor.tasks
from compressor.errors import CompressorError, RecipeError
from compressor.loading import ModelSpec
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())
CALIBRATION = {"name": "distill", "batch_size": 64}


def _mlp_spec():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
    with torch.no_grad():  # uneven input columns and a few large weights: layers with different outlier shares
        model[0].weight[:, :3] *= 6
        model[2].weight[5, :] *= 8
    return ModelSpec(model, (torch.randn(2, 16),), {"kind": "factory", "ref": "x:y"})


def _run(spec, step):
    recipe = parse_recipe({"version": 1, "passes": [step]})
    return compressor.Pipeline(recipe).run(spec, console=QUIET), recipe


def _owl_reference(model, x, sparsity, m, lam):
    """OWL by hand: each Linear's input on the calibration batch, |W| * ||X_j||, share above m x mean,
    linear map into [S - lam, S + lam] (most outliers lowest), one shift to the size-weighted mean."""
    ratios, sizes, h = [], [], x
    for layer in model:
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().double().numpy()
            score = np.abs(w) * np.linalg.norm(h.double().numpy(), axis=0)
            ratios.append(float((score > m * score.mean()).mean()))
            sizes.append(w.size)
        h = layer(h).detach()
    d, n = np.array(ratios), np.array(sizes, float)
    raw = sparsity + lam - 2 * lam * (d - d.min()) / (d.max() - d.min())
    return raw + (sparsity * n.sum() - (n * raw).sum()) / n.sum(), sizes, ratios


@pytest.mark.parametrize("pass_name", ["sparsegpt", "wanda"])
def test_owl_sparsities_match_the_formula_and_the_masks_meet_the_budget(pass_name):
    spec = _mlp_spec()
    dense = copy.deepcopy(spec.model)
    step = {"pass": pass_name, "sparsity": 0.6, "rows": 64, "calibration": CALIBRATION, "allocation": "owl",
            "owl_threshold": 2.0, "owl_lambda": 0.1}
    result, recipe = _run(spec, step)
    task = compressor.tasks.build_task(recipe.passes[0].config.calibration, spec, dense)
    want, sizes, ratios = _owl_reference(dense, task.batch(1_000_000)[0], 0.6, 2.0, 0.1)
    assert len(set(ratios)) == 3  # the premise: the layers differ
    names = ["0.weight", "2.weight", "4.weight"]
    pruned = [int((~result.masks[n]).sum()) for n in names]
    assert sum(pruned) == round(0.6 * sum(sizes))  # the budget, counted on the saved masks
    rows = {r.name: r for r in result.report.layers}
    metrics = result.report.passes[0]["metrics"]
    for name, k, s, n, d in zip(names, pruned, want, sizes, ratios):
        assert abs(k - s * n) <= 1  # one weight of rounding per layer
        assert rows[name].nonzero == n - k  # the row describes the saved weights
        assert rows[name].sparsity == pytest.approx(k / n, abs=1e-6)  # (the report keeps 6 digits)
        assert rows[name].target_sparsity == pytest.approx(k / n, abs=1e-6)
        assert metrics[name]["outlier_ratio"] == pytest.approx(d)
        assert "allocation owl" in " ".join(rows[name].notes)
        weight = dict(result.model.named_parameters())[name]
        assert bool((weight[~result.masks[name]] == 0).all())


def _curves_file(path, layers, pass_name="sparsegpt", metric="perplexity", dense=2.0):
    data = {"kind": "compressor.sensitivity", "format": 1, "fingerprint": "test", "pass": pass_name, "metric": metric,
            "higher_is_better": False, "dense": dense,
            "layers": {name: {"size": size, "points": [{"sparsity": s, "measured_sparsity": s, "value": v}
                                                       for s, v in points]}
                       for name, (size, points) in layers.items()}}
    path.write_text(json.dumps(data))
    return str(path)


def test_sensitivity_allocation_spends_the_budget_on_the_least_sensitive_layers(tmp_path):
    spec = _mlp_spec()
    # costs ln(value / 2): 4.weight is nearly free, 0.weight very costly; 2.weight in between
    curves = _curves_file(tmp_path / "s.json", {
        "0.weight": (640, [(0.5, 4.0), (0.9, 40.0)]),
        "2.weight": (960, [(0.5, 2.2), (0.9, 3.0)]),
        "4.weight": (192, [(0.5, 2.001), (0.9, 2.002)]),
    })
    step = {"pass": "wanda", "sparsity": 0.4, "rows": 64, "calibration": CALIBRATION, "allocation": "sensitivity",
            "sensitivity": curves}
    result, _ = _run(spec, step)
    pruned = {n: int((~m).sum()) for n, m in result.masks.items()}
    total = 640 + 960 + 192
    assert sum(pruned.values()) == round(0.4 * total)
    # by hand: 4.weight to its largest measured sparsity (0.9), 2.weight takes the rest (its cost per
    # weight removed is the next lowest, below 0.weight's up to 0.9); 0.weight stays dense
    assert pruned["4.weight"] == round(0.9 * 192)
    assert pruned["0.weight"] == 0
    assert pruned["2.weight"] == round(0.4 * total) - round(0.9 * 192)


def test_sensitivity_curves_must_cover_the_layers(tmp_path):
    curves = _curves_file(tmp_path / "s.json", {"0.weight": (640, [(0.5, 4.0)])})
    step = {"pass": "sparsegpt", "sparsity": 0.4, "rows": 64, "calibration": CALIBRATION, "allocation": "sensitivity",
            "sensitivity": curves}
    with pytest.raises(CompressorError, match=r"no curve for 2\.weight, 4\.weight.*compress sensitivity"):
        _run(_mlp_spec(), step)


@pytest.mark.parametrize("fields, where, needle", [
    ({"pattern": "nm", "allocation": "owl"}, "passes[0].allocation", "unstructured sparsity only"),
    ({"allocation": "sensitivity"}, "passes[0].sensitivity", "compress sensitivity --recipe"),
    ({"allocation": "sensitivity", "sensitivity": "nowhere/sensitivity.json"}, "passes[0].sensitivity",
     "no such curves file; make it with `compress sensitivity"),
    ({"owl_threshold": 3.0}, "passes[0].owl_threshold", "only used with allocation: owl"),
    ({"allocation": "owl", "owl_lambda": 1.5}, "passes[0].owl_lambda", "outside the allowed range"),
    ({"allocation": "owl", "owl_threshold": 0}, "passes[0].owl_threshold", "outside the allowed range"),
    ({"allocation": "owl", "sensitivity": "x.json"}, "passes[0].sensitivity", "only used with allocation: sensitivity"),
    ({"allocation": "even"}, "passes[0].allocation", "not allowed"),
])
@pytest.mark.parametrize("pass_name", ["sparsegpt", "wanda"])
def test_bad_allocation_settings_fail_at_recipe_load(pass_name, fields, where, needle):
    with pytest.raises(RecipeError) as info:
        parse_recipe({"version": 1, "passes": [{"pass": pass_name, **fields}]})
    assert info.value.path == where and needle in str(info.value)
    assert "\n" not in str(info.value)


def test_a_malformed_curves_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"kind": "compressor.sensitivity", "format": 1, "fingerprint": "x", "pass": "wanda",
                               "metric": "perplexity", "higher_is_better": False, "dense": 2.0,
                               "layers": {"a": {"size": 10, "points": [{"sparsity": 1.5, "measured_sparsity": 0.5,
                                                                       "value": 1.0}]}}}))
    with pytest.raises(RecipeError, match=r"layers\.a\.points\[0\]\.sparsity is outside \[0, 1\)"):
        parse_recipe({"version": 1, "passes": [{"pass": "wanda", "allocation": "sensitivity", "sensitivity": str(bad)}]})
    bad.write_text("{not json")
    with pytest.raises(RecipeError, match="not JSON"):
        parse_recipe({"version": 1, "passes": [{"pass": "wanda", "allocation": "sensitivity", "sensitivity": str(bad)}]})
