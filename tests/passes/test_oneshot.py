"""sparsegpt and wanda: reconstruction against dense math, exact patterns, LSTM calibration inputs,
sequential calibration, damping of singular Hessians, report notes, recipe validation."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from compressor import calibration
import compressor.tasks
from compressor.errors import RecipeError
from compressor.loading import ModelSpec
from compressor.passes import _oneshot
from compressor.recipe import parse_recipe
from compressor.solvers import is_nm, nm_mask, rowwise_topk_mask, topk_mask
from compressor.solvers.sparsegpt import hessian, obs_group_saliency, output_error, sparsegpt_prune, wanda_mask
from compressor.solvers.transposable import is_transposable_nm, transposable_nm_mask

QUIET = Console(file=io.StringIO())


def dense_error(x, w_ref, w):
    """||X W_ref^T - X W^T|| / ||X W_ref^T||, computed directly (the independent reference)."""
    x, w_ref, w = x.double(), w_ref.double(), w.double()
    return float((x @ w_ref.T - x @ w.T).norm() / (x @ w_ref.T).norm())


def correlated_inputs(rows, cols, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=gen) @ torch.randn(cols, cols, generator=gen) / cols**0.5
    scale = torch.rand(cols, generator=gen) * 3 + 0.1  # uneven input norms, as real activations
    return (base + 0.3 * torch.randn(rows, cols, generator=gen)) * scale


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "T4:8"])
def test_sparsegpt_beats_magnitude_and_wanda_on_a_linear_layer(pattern):
    x = correlated_inputs(600, 48)
    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(1))
    h = hessian(x)
    if pattern == "2:4":
        got = sparsegpt_prune(w, h, n=2, m=4, blocksize=16)
        magnitude = nm_mask(w, 2, 4)
        wanda = wanda_mask(w, x.norm(dim=0), n=2, m=4)
        for mask in (got.mask, magnitude, wanda):
            assert is_nm(mask, 2, 4)
    elif pattern == "T4:8":  # wanda has no transposable pattern: the magnitude mask twice
        got = sparsegpt_prune(w, h, n=4, m=8, transposable=True, blocksize=16)
        magnitude = wanda = transposable_nm_mask(w, 4, 8)
        for mask in (got.mask, magnitude):
            assert is_transposable_nm(mask, 4, 8)
    else:  # the same pattern for all three: half of every row
        got = sparsegpt_prune(w, h, sparsity=0.5, ranking="row", blocksize=16)
        magnitude = rowwise_topk_mask(w.abs(), 24)
        wanda = wanda_mask(w, x.norm(dim=0), sparsity=0.5)
        for mask in (got.mask, magnitude, wanda):
            assert bool((mask.sum(1) == 24).all())
    assert bool((got.weight[~got.mask] == 0).all())
    ours = dense_error(x, w, got.weight)
    assert ours <= dense_error(x, w, w * magnitude)
    assert ours <= dense_error(x, w, w * wanda)
    # the mask alone (before the OBS update) is worse than with the update
    assert ours < dense_error(x, w, w * got.mask)
    # the report's error from H equals the direct one
    assert output_error(h, w, got.weight) == pytest.approx(ours, rel=1e-9)


def test_sparsegpt_without_blocks_matches_a_dense_obs_reference():
    """Whatever the block size (lazy updates), the weights equal the textbook OBS updates, column
    after column, computed with the full inverse of H restricted to the columns not yet processed."""
    x = correlated_inputs(200, 10, seed=3)
    w = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    h = hessian(x)
    for blocksize in (1, 5, 128):
        got = sparsegpt_prune(w, h, sparsity=0.5, blocksize=blocksize, percdamp=0.0)
        ref = w.clone()  # replay OBS column by column on the mask chosen, with explicit inverses
        for j in range(10):
            hinv = torch.linalg.inv(h[j:, j:])  # H_F^-1 of the columns not yet fixed
            err = ref[:, j] * (~got.mask[:, j]) / hinv[0, 0]
            ref[:, j:] -= err.unsqueeze(1) * hinv[0].unsqueeze(0)
        torch.testing.assert_close(got.weight, ref * got.mask, rtol=1e-8, atol=1e-10)


def test_least_squares_refit_and_the_block_saliency_against_dense_math():
    """The refit (and blocks' weights): every row's kept weights are the exact least-squares fit of the
    original outputs (torch.linalg.lstsq on the kept columns is the reference); blocks rank by the OBS
    cost of removing a row's run of columns together (explicit inverses are the reference)."""
    from compressor.solvers.lstsq import masked_lstsq

    x = correlated_inputs(200, 12, seed=9)
    w = torch.randn(8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    h = hessian(x)
    mask = torch.rand(8, 12, generator=torch.Generator().manual_seed(11)) > 0.5
    got = masked_lstsq(h, w, mask, damping=0.0)
    xd = x.double()
    for r in range(8):
        ref = torch.linalg.lstsq(xd[:, mask[r]], xd @ w[r]).solution
        torch.testing.assert_close(got[r, mask[r]], ref, rtol=1e-7, atol=1e-9)
    assert bool((got[~mask] == 0).all())
    inv = torch.linalg.inv(h + 0.01 * h.diagonal().mean() * torch.eye(12, dtype=h.dtype))
    group = obs_group_saliency(w, h, 5)  # runs 0-4, 5-9, 10-11
    for c0, c1 in ((0, 5), (5, 10), (10, 12)):
        wb = w[:, c0:c1]
        cost = (wb @ torch.linalg.inv(inv[c0:c1, c0:c1]) * wb).sum(1)
        torch.testing.assert_close(group[:, c0:c1].sum(1), cost, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("pattern", [{"pattern": "nm", "n": 4, "m": 8, "transposable": True},
                                     {"pattern": "block", "block": [4, 4], "sparsity": 0.5, "balanced": True},
                                     {"pattern": "block", "block": [2, 8], "sparsity": 0.75}])
def test_sparsegpt_fixed_mask_patterns_on_an_lstm_model(pattern):
    """Transposable 4:8 and (balanced) blocks: the saved weights hold the pattern, blocks stay inside
    one gate, and the OBS update beats the mask alone and the magnitude mask of the same pattern."""
    spec = _lstm_spec()
    step = {"pass": "sparsegpt", **pattern, "rows": 512, "calibration": {"name": "distill", "batch_size": 16}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    metrics = result.report.passes[0]["metrics"]
    params = dict(result.model.named_parameters())
    for name, mask in result.masks.items():
        assert bool((params[name][~mask] == 0).all())
        if pattern["pattern"] == "nm":
            assert is_transposable_nm(mask, 4, 8)
        else:
            bh, bw = pattern["block"]
            rows, cols = mask.shape
            if rows % bh == 0 and cols % bw == 0:
                blocks = mask.reshape(rows // bh, bh, cols // bw, bw).permute(0, 2, 1, 3).reshape(rows // bh, cols // bw, -1)
                assert bool((blocks.all(-1) | ~blocks.any(-1)).all())  # every block all kept or all pruned
                if pattern.get("balanced"):
                    kept = blocks.all(-1).sum(1)
                    assert bool((kept == kept[0]).all())
                # the sparsity asked for, up to rounding to whole blocks in a block row
                pruned = float((~blocks.all(-1)).float().mean())
                assert abs(pruned - pattern["sparsity"]) <= 0.5 / (cols // bw) + 1e-6
        m = metrics[name]
        assert m["reconstruction_error_after"] < m["reconstruction_error_before"]
        assert m["reconstruction_error_after"] <= m["reconstruction_error_magnitude_mask"]
    row = next(r for r in result.report.layers if r.name == "rnn.weight_hh_l0")
    assert ("transposable" in row.pattern) == (pattern["pattern"] == "nm")


@pytest.mark.parametrize("pattern", [{"pattern": "nm", "n": 2, "m": 4}, {"sparsity": 0.5}])
def test_refit_keeps_the_sweeps_mask_and_never_raises_the_layer_error(pattern):
    """refit: the OBS sweep's mask, then the exact least-squares weights for it: the same mask (both runs
    record the same dense-model inputs), and on those inputs an error no higher than the sweep's."""
    runs = []
    for refit in (False, True):
        step = {"pass": "sparsegpt", **pattern, "refit": refit, "sequential": False, "rows": 512,
                "calibration": {"name": "distill", "batch_size": 16}}
        runs.append(compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(_lstm_spec(), console=QUIET))
    sweep, refit = runs
    for name, mask in sweep.masks.items():
        assert torch.equal(mask, refit.masks[name])
        before = sweep.report.passes[0]["metrics"][name]["reconstruction_error_after"]
        after = refit.report.passes[0]["metrics"][name]["reconstruction_error_after"]
        assert after <= before + 1e-9
    assert any(refit.report.passes[0]["metrics"][n]["reconstruction_error_after"] <
               sweep.report.passes[0]["metrics"][n]["reconstruction_error_after"] - 1e-4 for n in sweep.masks)


def test_sparsegpt_nm_pattern_holds_exactly_on_odd_shapes():
    x = correlated_inputs(300, 18, seed=5)
    w = torch.randn(7, 18)
    for blocksize in (6, 128):  # 6 is rounded down to a multiple of m
        got = sparsegpt_prune(w, hessian(x), n=2, m=4, blocksize=blocksize)
        assert is_nm(got.mask, 2, 4)  # full groups keep 2; the last 2 columns keep min(2, 2)
        assert bool((got.weight[~got.mask] == 0).all())
        assert torch.isfinite(got.weight).all()
        # transposable: sides that are not multiples of m (a last strip of 2 columns, a last tile of 3 rows)
        t = sparsegpt_prune(w, hessian(x), n=2, m=4, blocksize=blocksize, transposable=True)
        assert is_transposable_nm(t.mask, 2, 4)
        assert bool((t.weight[~t.mask] == 0).all())


def test_transposable_sweep_keeps_a_prior_and_chooses_each_strip_on_updated_weights():
    """A prior that is itself transposable 4:8 survives the sweep unchanged (its pruned entries are
    pruned first and the tiles allow keeping exactly the rest); and the strips are chosen on the
    weights as the OBS updates leave them, not on the originals: on correlated inputs the sweep's
    mask differs from the one chosen up front on the same saliency, and its error (with the same
    least-squares refit of the kept weights) is lower."""
    from compressor.solvers.lstsq import masked_lstsq

    x = correlated_inputs(800, 64, seed=21)
    w = torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    h = hessian(x)
    prior = transposable_nm_mask(torch.rand(32, 64, generator=torch.Generator().manual_seed(23)), 4, 8)
    kept = sparsegpt_prune(w, h, n=4, m=8, transposable=True, prior=prior, blocksize=16)
    assert torch.equal(kept.mask, prior)
    got = sparsegpt_prune(w, h, n=4, m=8, transposable=True, blocksize=16)
    assert is_transposable_nm(got.mask, 4, 8)
    inv = torch.linalg.inv(h + 0.01 * h.diagonal().mean() * torch.eye(64, dtype=h.dtype))
    upfront = transposable_nm_mask(w.pow(2) / inv.diagonal(), 4, 8)
    assert not torch.equal(got.mask, upfront)
    sweep_err = dense_error(x, w, masked_lstsq(h, w, got.mask, 0.01))
    upfront_err = dense_error(x, w, masked_lstsq(h, w, upfront, 0.01))
    assert sweep_err < upfront_err
    with pytest.raises(ValueError, match="transposable applies to N:M"):
        sparsegpt_prune(w, h, transposable=True)


def test_unstructured_layer_ranking_hits_the_sparsity_per_block():
    x = correlated_inputs(300, 40, seed=6)
    w = torch.randn(10, 40)
    got = sparsegpt_prune(w, hessian(x), sparsity=0.3, blocksize=16)
    for start in (0, 16, 32):
        block = got.mask[:, start:start + 16]
        assert int((~block).sum()) == round(0.3 * block.numel())


def test_duplicate_input_columns_are_handled_by_damping():
    """A singular Hessian: duplicated input columns and fewer rows than columns. Without damping
    the Cholesky factorisation fails; the solver raises the damping and says so."""
    x = correlated_inputs(12, 16, seed=7)
    x = torch.cat([x, x[:, :8]], 1)  # 24 columns, 8 of them duplicates; rank <= 12
    w = torch.randn(5, 24)
    h = hessian(x)
    assert torch.linalg.cholesky_ex(h)[1] != 0  # the premise: H itself does not factorise
    got = sparsegpt_prune(w, h, sparsity=0.5, percdamp=0.0)
    assert got.damping > 0 and any("damping raised" in n for n in got.notes)
    assert torch.isfinite(got.weight).all()
    assert dense_error(x, w, got.weight) <= dense_error(x, w, w * topk_mask(w.abs(), w.numel() // 2))
    default = sparsegpt_prune(w, h, sparsity=0.5)  # the default damping copes without a retry
    assert default.damping == 0.01 and not default.notes


def test_dead_input_columns_are_zeroed_and_reported():
    x = correlated_inputs(100, 8, seed=8)
    x[:, 3] = 0
    got = sparsegpt_prune(torch.randn(4, 8), hessian(x), sparsity=0.5)
    assert got.dead_columns == 1 and bool((got.weight[:, 3] == 0).all())


def _lstm_spec(layers=2):
    torch.manual_seed(0)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(30, 12)
            self.rnn = nn.LSTM(12, 20, layers, batch_first=True)
            self.decoder = nn.Linear(20, 30)

        def forward(self, tokens):
            out, _ = self.rnn(self.embedding(tokens))
            return self.decoder(out)

    model = LM().eval()
    return ModelSpec(model, (torch.randint(0, 30, (2, 7)),), {"kind": "factory", "ref": "x:y"})


def _unroll(rnn_weights: dict, x: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM layer by nn.LSTMCell: (outputs h_t, previous states h_{t-1}), both (B, T, H)."""
    cell = nn.LSTMCell(x.shape[-1], hidden)
    with torch.no_grad():
        for k, v in rnn_weights.items():
            getattr(cell, k).copy_(v)
    h = c = torch.zeros(x.shape[0], hidden)
    outs, prevs = [], []
    with torch.no_grad():
        for t in range(x.shape[1]):
            prevs.append(h)
            h, c = cell(x[:, t], (h, c))
            outs.append(h)
    return torch.stack(outs, 1), torch.stack(prevs, 1)


def _layer(rnn, k):
    return {f"{p}_{kind}": getattr(rnn, f"{p}_{kind}_l{k}").detach() for p in ("weight", "bias") for kind in ("ih", "hh")}


def test_lstm_hh_calibration_inputs_are_the_previous_hidden_states():
    spec = _lstm_spec()
    tokens = torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(2))
    got = _oneshot.record_inputs(spec.model, "rnn", iter([(tokens,)]), rows=10_000)
    x = spec.model.embedding(tokens).detach()
    out0, prev0 = _unroll(_layer(spec.model.rnn, 0), x, 20)
    out1, prev1 = _unroll(_layer(spec.model.rnn, 1), out0, 20)
    torch.testing.assert_close(got["weight_ih_l0"], x.reshape(-1, 12))
    torch.testing.assert_close(got["weight_hh_l0"], prev0.reshape(-1, 20), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["weight_ih_l1"], out0.reshape(-1, 20), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["weight_hh_l1"], prev1.reshape(-1, 20), rtol=1e-5, atol=1e-6)
    assert bool((prev1[:, 0] == 0).all()) and not bool((prev1[:, 1] == 0).all())
    # only the first layer is recomputed when only it is asked for
    assert set(_oneshot.record_inputs(spec.model, "rnn", iter([(tokens,)]), 10_000, layers=1)) == \
        {"weight_ih_l0", "weight_hh_l0"}


@pytest.mark.parametrize("sequential", [True, False])
def test_later_layers_are_calibrated_on_the_pruned_earlier_layers(monkeypatch, sequential):
    """Sequential (the paper): layer 1's inputs are the outputs of layer 0 as pruned; otherwise
    the dense model's."""
    spec = _lstm_spec()
    dense = copy.deepcopy(spec.model)
    seen = {}
    real = calibration.module_inputs

    def spy(model, module_path, batches, rows, layers=None, stop_at_recurrent=False):
        out = real(model, module_path, batches, rows, layers, stop_at_recurrent)
        seen.setdefault(module_path, []).append({k: v.clone() for k, v in out.items()})
        return out

    monkeypatch.setattr(calibration, "module_inputs", spy)  # the recorder records a model without blocks this way
    # the distill task feeds random tokens shaped like the example inputs: 8 x 7 per batch
    step = {"pass": "sparsegpt", "sparsity": 0.5, "rows": 280, "sequential": sequential,
            "calibration": {"name": "distill", "batch_size": 8}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    assert [len(seen["rnn"]), len(seen["decoder"])] == [2, 1]  # stages: layer 0, layer 1, decoder
    layer1 = seen["rnn"][1]["weight_ih_l1"]
    x = seen["rnn"][1]["weight_ih_l0"].reshape(-1, 7, 12)  # the calibration batches, embedded
    source = result.model if sequential else dense
    want, _ = _unroll(_layer(source.rnn, 0), x, 20)
    torch.testing.assert_close(layer1, want.reshape(-1, 20), rtol=1e-5, atol=1e-5)
    other, _ = _unroll(_layer((dense if sequential else result.model).rnn, 0), x, 20)
    assert not torch.allclose(layer1, other.reshape(-1, 20), atol=1e-3)


@pytest.mark.parametrize("pass_name", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("pattern", ["unstructured", "nm"])
def test_passes_on_an_lstm_model(pass_name, pattern):
    spec = _lstm_spec()
    step = {"pass": pass_name, "pattern": pattern, "sparsity": 0.5, "rows": 512,
            "calibration": {"name": "distill", "batch_size": 16}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    metrics = result.report.passes[0]["metrics"]
    assert set(metrics) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1",
                            "decoder.weight"}
    for name, mask in result.masks.items():
        w = dict(result.model.named_parameters())[name]
        if pattern == "nm":
            assert is_nm(mask, 2, 4)
        else:
            assert float((~mask).float().mean()) == pytest.approx(0.5, abs=0.01)
        assert bool((w[~mask] == 0).all())
        m = metrics[name]
        assert m["calibration_rows"] == 512
        if pass_name == "sparsegpt":
            assert m["reconstruction_error_after"] < m["reconstruction_error_before"]
            assert m["reconstruction_error_after"] <= m["reconstruction_error_magnitude_mask"]
    notes = {row.name: " ".join(row.notes) for row in result.report.layers}
    assert pass_name in notes["rnn.weight_hh_l1"] and "calibration" in notes["rnn.weight_hh_l1"]


def test_wanda_mask_is_the_per_row_activation_score_top_k():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12)).eval()
    spec = ModelSpec(copy.deepcopy(model), (torch.randn(2, 16),), {"kind": "factory", "ref": "x:y"})
    step = {"pass": "wanda", "sparsity": 0.25, "rows": 64, "calibration": {"name": "distill", "batch_size": 64}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    # the distill task's batch 1_000_000 is what the pass recorded: rebuild the score by hand
    task = compressor.tasks.build_task(parse_recipe({"version": 1, "passes": [step]}).passes[0].config.calibration,
                                       spec, model)
    x = task.batch(1_000_000)[0]
    score = model[0].weight.detach().abs() * x.norm(dim=0)
    want = torch.zeros(12, 16, dtype=torch.bool)
    want.scatter_(1, score.argsort(1, descending=True)[:, :12], True)
    assert torch.equal(result.masks["0.weight"], want)


def test_fewer_rows_than_columns_gives_a_note():
    spec = _lstm_spec()
    step = {"pass": "sparsegpt", "targets": ["rnn.weight_hh_l0"], "rows": 12,
            "calibration": {"name": "distill", "batch_size": 2}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    row = next(r for r in result.report.layers if r.name == "rnn.weight_hh_l0")
    assert any("only 12 calibration rows for 20 input columns" in n for n in row.notes)
    metrics = result.report.passes[0]["metrics"]["rnn.weight_hh_l0"]
    assert metrics["calibration_rows"] == 12
    # the refit's ridge is refit_damping (the sweep kept its damping: no retry was needed)
    assert (metrics["damping"], metrics["least_squares_ridge"]) == (0.01, 1e-4)
    assert any("damping 0.01, least-squares ridge 0.0001;" in n for n in row.notes)


@pytest.mark.parametrize("fields, where", [
    ({"sparsity": 1.0}, "passes[0].sparsity"),
    ({"pattern": "nm", "n": 4, "m": 4}, "passes[0].n"),
    ({"percdamp": -0.1}, "passes[0].percdamp"),
    ({"refit_damping": -1e-4}, "passes[0].refit_damping"),
    ({"blocksize": 0}, "passes[0].blocksize"),
    ({"rows": 0}, "passes[0].rows"),
    ({"pattern": "blocks"}, "passes[0].pattern"),
    ({"pattern": "block", "block": [0, 4]}, "passes[0].block"),
    ({"transposable": True}, "passes[0].transposable"),
    ({"pattern": "nm", "transposable": True, "solver": "magic"}, "passes[0].solver"),
    ({"pattern": "nm", "n": 4, "m": 8, "transposable": True, "solver": "enumerate"}, "passes[0].solver"),
])
def test_bad_settings_name_the_recipe_path(fields, where):
    with pytest.raises(RecipeError, match=rf"{where.replace('[', '.').replace(']', '.')}"):
        parse_recipe({"version": 1, "passes": [{"pass": "sparsegpt", **fields}]})


@pytest.mark.parametrize("pass_name", ["sparsegpt", "nm_convert"])
def test_a_solver_this_machine_cannot_run_is_refused_when_the_recipe_loads(pass_name, monkeypatch):
    from compressor.solvers import cyclecancel

    if not cyclecancel.available():
        pytest.skip(f"the compiled solver is unavailable here: {cyclecancel.unavailable_reason()}")
    step = {"pass": pass_name, "pattern": "nm", "n": 4, "m": 8, "transposable": True, "solver": "cyclecancel"}
    if pass_name == "nm_convert":
        del step["pattern"]
    parse_recipe({"version": 1, "passes": [step]})  # builds here
    monkeypatch.setenv("COMPRESSOR_NATIVE", "0")
    monkeypatch.setattr(cyclecancel, "_LIBRARY", cyclecancel._LIBRARY.fresh())
    with pytest.raises(RecipeError, match=r"passes\[0\]\.solver: method='cyclecancel' .*COMPRESSOR_NATIVE=0.*'exact' or 'mincostflow'"):
        parse_recipe({"version": 1, "passes": [step]})
    parse_recipe({"version": 1, "passes": [{**step, "solver": "exact"}]})  # exact falls back to OR-Tools


def test_a_hessian_that_no_damping_rescues_is_a_clear_error():
    from compressor.solvers.sparsegpt import HessianError

    with pytest.raises(HessianError, match="not positive definite even with damping"):
        sparsegpt_prune(torch.randn(3, 4), -torch.eye(4, dtype=torch.float64))


def test_calibration_batches_of_keyword_inputs_reach_the_layer():
    """The text task's batches are keyword inputs (input_ids, attention_mask); the one-shot recorder
    passed a mapping as positional arguments (its keys) before it shared nm_convert's recorder."""
    import torch.nn as nn

    class Keyworded(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 6)
            self.proj = nn.Linear(6, 4)

        def forward(self, input_ids=None, attention_mask=None):
            return self.proj(self.embedding(input_ids) * attention_mask.unsqueeze(-1))

    model = Keyworded()
    ids, mask = torch.randint(0, 10, (2, 5)), torch.ones(2, 5)
    got = _oneshot.record_inputs(model, "proj", iter([{"input_ids": ids, "attention_mask": mask}]), rows=100)
    torch.testing.assert_close(got["weight"], model.embedding(ids).reshape(-1, 6).detach())

    class KeywordTask:  # the protocol of a user task whose inputs() are keyword inputs
        def batch(self, step):
            return step

        def inputs(self, batch):
            return {"input_ids": ids, "attention_mask": mask}

    class State:
        def task(self, config):
            return KeywordTask()

    # through the passes' own batch stream (it turned a mapping into a tuple of its keys)
    batches = _oneshot.calibration_batches(State(), None)
    got = _oneshot.record_inputs(model, "proj", batches, rows=10)
    torch.testing.assert_close(got["weight"], model.embedding(ids).reshape(-1, 6).detach())
