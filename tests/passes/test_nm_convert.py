"""nm_convert: masks from the solvers, calibration inputs, reconstruction against dense math."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from fixture_models import load_trusted  # tests/fixture_models.py: passes the suite's own factory
from compressor.calibration import rnn_layer_inputs
from compressor.errors import CompressorError, RecipeError
from compressor.loading import ModelSpec
from compressor.passes.nm_convert import reconstruct_adam, reconstruct_lstsq, relative_error
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())


def is_transposable(mask, n, m):
    rows, cols = mask.shape
    t = mask[: rows - rows % m, : cols - cols % m].reshape(rows // m, m, cols // m, m).permute(0, 2, 1, 3)
    return bool((t.sum(-1) == n).all()) and bool((t.sum(-2) == n).all())


def test_rnn_layer_inputs_reproduce_the_stacked_lstm():
    """The recomputed inputs of each weight, multiplied out, rebuild the module's own gates."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(3, 7, 6)
    parts = rnn_layer_inputs(lstm, x)
    assert set(parts) == {f"weight_{k}_l{i}{s}" for k in ("ih", "hh") for i in range(2) for s in ("", "_reverse")}
    # the top layer's gates from the recorded inputs give the module's outputs (forward direction)
    out, _ = lstm(x)
    H = 5
    gates = parts["weight_ih_l1"] @ lstm.weight_ih_l1.T + lstm.bias_ih_l1 + parts["weight_hh_l1"] @ lstm.weight_hh_l1.T + lstm.bias_hh_l1
    i, f, g, o = gates.reshape(3, 7, 4 * H).split(H, -1)
    c = torch.zeros(3, H)
    hs = []
    for t in range(7):
        c = torch.sigmoid(f[:, t]) * c + torch.sigmoid(i[:, t]) * torch.tanh(g[:, t])
        hs.append(torch.sigmoid(o[:, t]) * torch.tanh(c))
    torch.testing.assert_close(torch.stack(hs, 1), out[..., :H], rtol=1e-5, atol=1e-5)


def test_lstsq_reconstruction_is_optimal_per_row():
    torch.manual_seed(1)
    x = torch.randn(400, 16) @ torch.randn(16, 16)  # correlated inputs
    w = torch.randn(8, 16)
    mask = torch.rand(8, 16) > 0.5
    got = reconstruct_lstsq(x, w, mask, damping=0.0)
    assert bool((got[~mask] == 0).all())
    for r in range(8):  # independent reference: scipy-free least squares on the kept columns
        keep = mask[r]
        sol = torch.linalg.lstsq(x[:, keep].double(), (x @ w[r]).double().unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(got[r, keep].double(), sol, rtol=1e-6, atol=1e-6)
    adam = reconstruct_adam(x, w, mask, iterations=300, lr=1e-2, batch=128)
    assert relative_error(x, w, got) <= relative_error(x, w, adam) + 1e-6 < relative_error(x, w, w * mask)


def test_lstsq_is_right_after_a_greedy_solve_changed_the_thread_count():
    """Regression: the greedy solvers run on one thread and restore the count; after that, torch's
    batched LU (MKL) returned bad pivots for systems of a few hundred unknowns. Checked against numpy."""
    import numpy as np

    from compressor.solvers import transposable_nm_mask

    old = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite runs on one thread (tests/conftest.py): here the count must change
    try:
        transposable_nm_mask(torch.randn(16, 16), 2, 4, method="greedy")  # enters and leaves single_thread: 2 -> 1 -> 2
        assert torch.get_num_threads() == 2
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(700, 600, generator=gen, dtype=torch.float64)
        w = torch.randn(4, 600, generator=gen, dtype=torch.float64)
        mask = torch.zeros(4, 600, dtype=torch.bool)
        mask[:, ::2] = True  # 300 kept inputs per row: the size that failed
        got = reconstruct_lstsq(x, w, mask, damping=0.0)
    finally:
        torch.set_num_threads(old)
    xn, wn = x.numpy(), w.numpy()
    for r in range(4):
        keep = mask[r].numpy()
        ref = np.linalg.lstsq(xn[:, keep], xn @ wn[r], rcond=None)[0]
        np.testing.assert_allclose(got[r, mask[r]].numpy(), ref, rtol=1e-7, atol=1e-9)


def test_lstsq_without_damping_on_too_few_rows_is_a_clear_error():
    x = torch.randn(10, 32)
    mask = torch.ones(4, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="damping > 0"):
        reconstruct_lstsq(x, torch.randn(4, 32), mask, damping=0.0)


@pytest.mark.parametrize("reconstruct", ["adam", "lstsq"])
def test_transposable_conversion_of_an_mlp_cuts_the_error(load_fixture, reconstruct):
    spec = load_fixture("mlp")
    step = {"pass": "nm_convert", "targets": ["fc1", "fc2"], "n": 2, "m": 4, "transposable": True,
            "reconstruct": reconstruct, "iterations": 200, "lr": 0.01, "rows": 512,
            "calibration": {"name": "distill", "batch_size": 64}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    metrics = result.report.passes[0]["metrics"]
    for row in result.report.layers[:2]:
        assert is_transposable(result.masks[row.name], 2, 4)
        m = metrics[row.name]
        assert m["reconstruction_error_after"] <= m["reconstruction_error_before"] + 1e-6
        assert 0.5 < m["kept_magnitude_vs_plain"] <= 1.0 + 1e-9
        assert row.pattern == "transposable 2:4"
    # fc1 sees i.i.d. Gaussian inputs (X^T X ~ identity): nothing to gain there. fc2 sees
    # correlated ReLU features, where reconstruction must pay off.
    fc2 = metrics["fc2.weight"]
    assert fc2["reconstruction_error_after"] <= 0.7 * fc2["reconstruction_error_before"]
    assert result.report.layers[2].pattern == "dense"


def test_a_float_input_model_calibrates_without_a_calibration_section(load_fixture):
    """The default calibration task (lm) feeds token ids; a model of float inputs got integer
    inputs and failed on a dtype mismatch. It now gets random inputs shaped like its examples."""
    spec = load_fixture("mlp")
    step = {"pass": "nm_convert", "targets": ["fc2"], "reconstruct": "lstsq", "rows": 256}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    fc2 = result.report.passes[0]["metrics"]["fc2.weight"]
    assert fc2["reconstruction_error_after"] < fc2["reconstruction_error_before"]
    assert is_transposable(result.masks["fc2.weight"], 2, 4)


@pytest.mark.parametrize("keep_existing", [False, True])
def test_prior_unstructured_mask_is_the_solvers_prior(load_fixture, keep_existing):
    """After unstructured pruning to 60%, 2:4 needs weights the earlier mask removed: by default they
    come back (with the original values, as nothing is reconstructed) and every group keeps exactly 2,
    preferring what the earlier mask kept; ``keep_existing`` keeps only the intersection."""
    spec = load_fixture("mlp")
    original = spec.model.fc2.weight.detach().clone()
    recipe = {"version": 1, "passes": [
        {"pass": "unstructured_prune", "targets": ["fc2"], "sparsity": 0.6},
        {"pass": "nm_convert", "targets": ["fc2"], "n": 2, "m": 4, "transposable": False, "reconstruct": "none",
         "keep_existing": keep_existing},
    ]}
    result = compressor.Pipeline(parse_recipe(recipe)).run(spec, console=QUIET)
    w = result.model.fc2.weight.detach()
    kept = w != 0
    prior = original.abs() >= original.abs().flatten().kthvalue(round(0.6 * original.numel()) + 1).values  # top 40%
    groups = kept.reshape(w.shape[0], -1, 4).sum(-1)
    prior_groups = prior.reshape(w.shape[0], -1, 4).sum(-1)
    row = next(r for r in result.report.layers if r.name == "fc2.weight")
    if keep_existing:
        assert bool((kept <= prior).all()) and bool((groups == prior_groups.clamp(max=2)).all())
        assert row.sparsity > 0.6 and any("keep_existing" in n for n in row.notes)
    else:
        assert bool((groups == 2).all()) and row.sparsity == pytest.approx(0.5)
        # prior-kept weights first: a group keeps min(2, prior kept there) of them
        assert bool(((kept & prior).reshape(w.shape[0], -1, 4).sum(-1) == prior_groups.clamp(max=2)).all())
        assert bool((kept & ~prior).any()) and any("came back" in n for n in row.notes)
    torch.testing.assert_close(w[kept], original[kept], rtol=0, atol=0)  # no reconstruction: original values


def _full_groups_keep(mask, n, m):
    """Every full group of m along a row keeps n, and every full m x m tile keeps n per row and column."""
    rows, cols = mask.shape
    c = cols - cols % m
    assert bool((mask[:, :c].reshape(rows, -1, m).sum(-1) == n).all())
    assert is_transposable(mask, n, m)


@pytest.mark.parametrize("first", [{"pass": "nm_prune", "n": 2, "m": 4},
                                   {"pass": "unstructured_prune", "sparsity": 0.5}])
@pytest.mark.parametrize("keep_existing", [False, True])
def test_conversion_over_an_earlier_mask_saves_the_pattern_it_reports(load_fixture, tmp_path, first, keep_existing):
    """nm_convert transposable 4:8 after another pass: the saved artifact holds exactly the pattern (unless
    keep_existing), and the reported errors are those of the saved weights on the calibration inputs,
    recomputed here from the original model."""
    spec = load_fixture("mlp")
    original = copy.deepcopy(spec.model)
    convert = {"pass": "nm_convert", "n": 4, "m": 8, "transposable": True, "reconstruct": "lstsq", "rows": 256,
               "keep_existing": keep_existing, "calibration": {"name": "fixture_models:seeded_mlp_task"}}
    recipe = {"version": 1, "passes": [{**first, "targets": ["fc1", "fc2"]}, {**convert, "targets": ["fc1", "fc2"]}]}
    result = compressor.Pipeline(parse_recipe(recipe)).run(spec, out=tmp_path / "out", console=QUIET)
    model, masks = load_trusted(tmp_path / "out"), compressor.load_masks(tmp_path / "out")
    batches = torch.cat([torch.randn(32, 20, generator=torch.Generator().manual_seed(1_000_000 + s)) for s in range(8)])
    with torch.no_grad():
        inputs = {"fc1": batches, "fc2": torch.relu(original.fc1(batches))}
        # sequential calibration: fc2 is fitted on the converted fc1's outputs
        inputs["fc2"] = torch.relu(model.fc1(batches))
    metrics = result.report.passes[1]["metrics"]
    for name in ("fc1", "fc2"):
        w = getattr(model, name).weight.detach()
        mask = masks[f"{name}.weight"]
        assert bool(((w != 0) == mask).all())
        if keep_existing:
            groups = mask[:, : w.shape[1] // 8 * 8].reshape(w.shape[0], -1, 8).sum(-1)
            assert bool((groups <= 4).all()) and bool((groups < 4).any())
        else:
            _full_groups_keep(mask, 4, 8)
        x, w0 = inputs[name], getattr(original, name).weight.detach()
        ref = x @ w0.T
        err = float((ref - x @ w.T).norm() / ref.norm())
        m = metrics[f"{name}.weight"]
        assert m["reconstruction_error_after"] == pytest.approx(err, rel=1e-5)
        assert m["reconstruction_error_after"] < m["reconstruction_error_before"]
        assert m["sparsity"] == pytest.approx(float((w == 0).float().mean()))
        row = next(r for r in result.report.layers if r.name == f"{name}.weight")
        assert row.sparsity == pytest.approx(m["sparsity"], abs=1e-6)
    fc2 = next(r for r in result.report.layers if r.name == "fc2.weight")  # 36 x 48: every row has six groups of 8
    assert (fc2.sparsity == pytest.approx(0.5)) != keep_existing


class _Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize("transposable", [False, True])
def test_activation_score_keeps_weights_on_large_inputs(transposable):
    """Input feature 0 is 100x larger than the others and its weights 10x smaller: magnitude drops
    them, ``score: activation`` (|W| x input column norm) must keep them and lower the error."""
    torch.manual_seed(0)
    fc = nn.Linear(8, 8)
    with torch.no_grad():
        fc.weight.copy_(torch.rand(8, 8) * 0.5 + 0.5)  # |w| in [0.5, 1]
        fc.weight[:, 0] = 0.05
    scale = torch.ones(8)
    scale[0] = 100.0
    model = nn.Sequential(_Scale(scale), fc).eval()
    masks = {}
    for score in ("magnitude", "activation"):
        spec = ModelSpec(copy.deepcopy(model), (torch.randn(2, 8),), {"kind": "factory", "ref": "x:y"})  # runs edit it
        step = {"pass": "nm_convert", "n": 2, "m": 4, "transposable": transposable, "score": score,
                "reconstruct": "none", "rows": 256, "calibration": {"name": "distill", "batch_size": 32}}
        result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
        masks[score] = result.masks["1.weight"]
        metrics = result.report.passes[0]["metrics"]["1.weight"]
    if transposable:
        # every column keeps exactly 2 of each 4-row tile whatever the score, so the scaled column
        # cannot win more entries; the score only moves choices within the tiles
        assert is_transposable(masks["activation"], 2, 4) and is_transposable(masks["magnitude"], 2, 4)
        assert metrics["reconstruction_error_before"] <= metrics["reconstruction_error_magnitude_mask"] + 1e-6
    else:
        assert not bool(masks["magnitude"][:, 0].any())  # the smallest weights of every group
        assert bool(masks["activation"][:, 0].all())
        assert metrics["reconstruction_error_before"] < 0.5 * metrics["reconstruction_error_magnitude_mask"]


def test_narrow_layers_are_skipped_and_reported():
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 4))
    spec = ModelSpec(model.eval(), (torch.randn(2, 3),), {"kind": "factory", "ref": "x:y"})
    step = {"pass": "nm_convert", "n": 1, "m": 4, "reconstruct": "lstsq", "calibration": {"name": "distill", "batch_size": 8}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    first, second = result.report.layers
    assert first.pattern == "dense" and any("narrower than m=4" in n for n in first.notes)
    assert second.pattern == "transposable 1:4" and second.sparsity == pytest.approx(0.75)


def test_calibration_batch_that_does_not_fit(load_fixture):
    spec = load_fixture("mlp")
    # character-LM batches (token ids) for a model that takes 20 float features
    step = {"pass": "nm_convert", "targets": ["fc1"], "reconstruct": "lstsq", "calibration": {"name": "lm", "batch_size": 4}}
    with pytest.raises(CompressorError, match="calibration batch does not fit"):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)


def test_example_inputs_that_do_not_fit(load_fixture):
    spec = load_fixture("mlp")
    spec.example_inputs = (torch.randn(2, 7),)
    step = {"pass": "nm_prune"}
    with pytest.raises(CompressorError, match="example inputs do not fit"):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)


@pytest.mark.parametrize("fields,where", [({"solver": "magic"}, "solver"), ({"n": 4, "m": 4}, "n"),
                                          ({"iterations": 0}, "iterations"), ({"rows": 0}, "rows"),
                                          ({"score": "wanda"}, "score")])
def test_bad_settings(fields, where):
    with pytest.raises(RecipeError) as info:
        parse_recipe({"version": 1, "passes": [{"pass": "nm_convert", **fields}]})
    assert info.value.path == f"passes[0].{where}"


@pytest.mark.parametrize("task,match", [
    ("empty_batches_task", "calibration task yields empty batches"),  # an endless task of empty batches hung
    ("no_batches_task", "no calibration data reached"),  # StopIteration at once was a RuntimeError traceback
])
def test_calibration_tasks_without_rows_are_clear_errors(load_fixture, task, match):
    step = {"pass": "nm_convert", "targets": ["fc1"], "reconstruct": "lstsq",
            "calibration": {"name": f"fixture_models:{task}"}}
    with pytest.raises(CompressorError, match=match):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(load_fixture("mlp"), console=QUIET)


def test_a_calibration_task_that_runs_out_uses_the_rows_it_gave(load_fixture):
    """Three batches of 8 rows, then StopIteration: reconstruction runs on those 24 rows."""
    step = {"pass": "nm_convert", "targets": ["fc1"], "reconstruct": "lstsq", "rows": 4096,
            "calibration": {"name": "fixture_models:three_batches_task"}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(load_fixture("mlp"), console=QUIET)
    row = next(r for r in result.report.layers if r.name == "fc1.weight")
    assert row.pattern == "transposable 2:4" and row.sparsity == pytest.approx(0.5)


def test_per_layer_figures_are_in_the_report_notes(load_fixture):
    """Kept magnitude and the calibration error before/after reach the table and the HTML page as notes."""
    step = {"pass": "nm_convert", "targets": ["fc1", "fc2"], "reconstruct": "lstsq", "rows": 256,
            "calibration": {"name": "distill", "batch_size": 32}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(load_fixture("mlp"), console=QUIET)
    metrics = result.report.passes[0]["metrics"]
    for row in result.report.layers:
        if row.name not in ("fc1.weight", "fc2.weight"):
            continue
        m = metrics[row.name]
        note = next(n for n in row.notes if n.startswith("keeps "))
        assert f"{m['kept_magnitude_vs_plain']:.2%}" in note
        assert f"{m['reconstruction_error_before']:.3g} with the mask alone -> {m['reconstruction_error_after']:.3g}" in note
        assert m["reconstruction_error_after"] < m["reconstruction_error_before"]
