"""The dynamic_gate pass and gated layers (Hadifar et al.) against independent dense references."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from torch.testing import assert_close

import compressor
from fixture_models import load_trusted  # tests/fixture_models.py: passes the suite's own factory
from compressor.errors import RecipeError, TargetError
from compressor.kernels import GatedGRU, GatedLinear, GatedLSTM, gated_linear
from compressor.patterns import Gated, pattern_from_dict
from compressor.recipe import parse_recipe
from compressor.swaps import densify
from gated_reference import gated_linear_reference  # tests/gated_reference.py

# -- gated Linear ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("init", ["random", "norm"])
def test_gated_linear_matches_reference(mode, rank, init):
    lin = nn.Linear(37, 29).double()  # odd shapes: partial edge blocks
    mod = gated_linear(lin, (8, 8), 0.5, mode, rank, init).double()
    with torch.no_grad():
        for p in mod.gate.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # make the gate input-dependent whatever the init
    x = torch.randn(5, 37, dtype=torch.float64)
    with torch.no_grad():
        want = gated_linear_reference(x, mod.to_dense_weight(), mod.bias, mod.gate, (8, 8), 0.5, mode)
        for path in ("dense", "ebag", "bmm"):
            assert_close(mod(x, path=path), want)
        assert_close(mod(x), want)


def test_keep_one_rescaling_is_blockwise_scaled_dense():
    """keep=1 keeps all K blocks and g = K s / sum(s): y = sum_i (K s_ji / S) W_ji x_i.

    A constant score (zero gate weights, equal biases) gives g = 1: exactly the dense layer. With
    zero weights and biases b the scale of block (j, i) is K softplus(b_ji) / sum softplus(b).
    """
    lin = nn.Linear(24, 16).double()
    mod = gated_linear(lin, (4, 8), 1.0, "global", 0, "random").double()
    x = torch.randn(6, 24, dtype=torch.float64)
    with torch.no_grad():
        mod.gate.weight.zero_()
        mod.gate.bias.fill_(0.3)
        assert_close(mod(x), lin(x))
        b = torch.randn(12, dtype=torch.float64)
        mod.gate.bias.copy_(b)
        scale = (12 * F.softplus(b) / F.softplus(b).sum()).view(4, 3).repeat_interleave(4, 0).repeat_interleave(8, 1)
        assert_close(mod(x), F.linear(x, lin.weight * scale, lin.bias))


def test_norm_init_equals_static_pruning_of_the_largest_blocks():
    lin = nn.Linear(32, 32).double()
    mod = gated_linear(lin, (8, 8), 0.5, "global", 0, "norm").double()
    norms = lin.weight.detach().view(4, 8, 4, 8).pow(2).sum(dim=(1, 3))  # (Ro, Ci)
    keep = norms.flatten() >= norms.flatten().sort(descending=True).values[7]
    mask = keep.view(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    x = torch.randn(3, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_close(mod(x), F.linear(x, lin.weight * mask, lin.bias), rtol=2e-2, atol=1e-2)  # g within 1% of K/k


# -- gated LSTM / GRU ---------------------------------------------------------------------------


def ref_rnn(cell, rnn, gated, x, block, keep, mode):
    """One-layer unidirectional reference: every step builds both gated matrices by hand."""
    B, T, _ = x.shape
    H = rnn.hidden_size
    h = torch.zeros(B, H, dtype=x.dtype)
    c = torch.zeros(B, H, dtype=x.dtype)
    ih, hh = gated["weight_ih_l0"], gated["weight_hh_l0"]
    outs = []
    for t in range(T):
        xp = gated_linear_reference(x[:, t], rnn.weight_ih_l0, rnn.bias_ih_l0, ih.gate, block, keep, mode)
        hp = gated_linear_reference(h, rnn.weight_hh_l0, rnn.bias_hh_l0, hh.gate, block, keep, mode)
        if cell == "lstm":
            i, f, g, o = (xp + hp).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            xr, xz, xn = xp.chunk(3, dim=1)
            hr, hz, hn = hp.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("mode", ["global", "row"])
def test_gated_rnn_matches_reference_and_steps(cell, mode):
    base = (nn.LSTM if cell == "lstm" else nn.GRU)(10, 12, 1, batch_first=True).double()
    cls = GatedLSTM if cell == "lstm" else GatedGRU
    mod = cls.from_dense(base, None, (4, 4), 0.5, mode, 0, "random").double().eval()
    dense = mod.to_dense()  # the weights the gated module holds
    x = torch.randn(3, 5, 10, dtype=torch.float64)
    with torch.no_grad():
        out, state = mod(x)
        want = ref_rnn(cell, dense, mod.gated(), x, (4, 4), 0.5, mode)
        assert_close(out, want)
        s = None
        for t in range(5):  # streaming steps reproduce the sequence
            y, s = mod.step(x[:, t], s)
            assert_close(y, want[:, t])
        assert_close(s, state)


def test_gated_rnn_only_selected_weights_and_errors():
    base = nn.LSTM(8, 8, 2)
    mod = GatedLSTM.from_dense(base, ["weight_hh_l1"], (4, 4), 0.5)
    assert list(mod.gated()) == ["weight_hh_l1"]
    assert isinstance(mod.proj["ih_l0"], nn.Linear) and isinstance(mod.proj["hh_l1"], GatedLinear)
    with pytest.raises(ValueError, match="unknown weight names"):
        GatedLSTM.from_dense(base, ["weight_xx_l0"], (4, 4))
    with pytest.raises(TypeError):
        GatedGRU.from_dense(base)


# -- the pass: training, artifacts, report, ONNX --------------------------------------------------


def _recipe(**fields):
    train = fields.pop("train", {"steps": 2, "eval_every": 0, "checkpoint_every": 0,
                                 "task": {"name": "distill", "batch_size": 4, "seq_len": 8}})
    export = fields.pop("export", {})
    step = {"pass": "dynamic_gate", "block": [8, 4], "latency_repeats": 2, "calibration_batches": 1,
            "train": train, **fields}
    return parse_recipe({"version": 1, "passes": [step], "export": export})


def _run(load_fixture, name, out=None, seq_len=None, **fields):
    spec = load_fixture(name)
    if seq_len is not None:  # shorter example sequences: a smaller unrolled graph to export and verify
        spec.example_inputs = (spec.example_inputs[0][:, :seq_len],)
    result = compressor.Pipeline(_recipe(**fields)).run(spec, out=out, console=Console(file=io.StringIO()))
    return spec, result


def test_training_reduces_the_loss(load_fixture):
    train = {"steps": 25, "lr": 0.01, "eval_every": 0, "checkpoint_every": 0,
             "task": {"name": "distill", "batch_size": 8, "loss": "mse"}}
    _, result = _run(load_fixture, "mlp", train=train, block=[8, 4], latency_repeats=0)
    losses = result.report.passes[0]["metrics"]["history"]["loss"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


@pytest.mark.parametrize("fixture,rank,onnx", [("lstm_lm", 0, True), ("gru_lm", 2, False)])
def test_roundtrip_report_and_onnx(load_fixture, tmp_path, fixture, rank, onnx):
    out = tmp_path / "run"
    spec, result = _run(load_fixture, fixture, out=out, targets=["rnn", "decoder"], rank=rank,
                        export={"onnx": onnx}, seq_len=3)
    model = result.model
    assert isinstance(model.rnn, GatedLSTM if fixture == "lstm_lm" else GatedGRU)
    assert isinstance(model.decoder, GatedLinear)
    # the records on disk, written out (the JSON of the records before they were typed: older artifacts load)
    weights = ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]  # the fixtures' two layers
    options = {"block": [8, 4], "keep": 0.5, "mode": "global", "rank": rank, "init": "random", "seed": 0}
    assert compressor.read_metadata(out)["replacements"] == [
        {"module": "rnn", "kind": "gated_lstm" if fixture == "lstm_lm" else "gated_gru",
         "options": {**options, "weights": weights}, "structural": True},
        {"module": "decoder", "kind": "gated_linear", "options": {**options, "weights": ["weight"]}, "structural": True}]
    loaded = load_trusted(out)
    x = spec.example_inputs
    with torch.no_grad():
        assert torch.equal(loaded(*x), model(*x))
    if onnx:  # model and streaming step graph (TopK + Gather), each verified in ONNX Runtime
        assert {"onnx_rel_error(model.onnx)", "onnx_rel_error(rnn.step.onnx)"} <= set(result.report.metrics)
        assert (out / "model.onnx").is_file() and (out / "rnn.step.onnx").is_file()
    rows = {r.name: r for r in compressor.read_report(out).layers}
    row = rows["rnn.weight_hh_l0"]
    pattern = pattern_from_dict(row.pattern_spec)
    assert isinstance(pattern, Gated) and pattern.rank == rank
    H = row.shape[1]
    K = math.ceil(row.shape[0] / 8) * math.ceil(H / 4)
    gate = H * K if rank == 0 else H * rank + rank * K
    assert row.compressed_flops == 2 * (round(row.params * math.ceil(0.5 * K) / K) + gate)
    assert row.dense_flops == 2 * row.params
    assert row.compressed_bytes == (row.params + pattern.gate_params(tuple(row.shape))) * 4
    freq = torch.tensor(row.block_keep_frequency)
    assert freq.shape == (math.ceil(row.shape[0] / 8), math.ceil(H / 4))
    assert abs(float(freq.sum()) - math.ceil(0.5 * K)) < 1e-2  # every example keeps exactly k blocks
    assert any("batch-1 streaming step" in n for n in row.notes)
    assert row.kernel == "gated blocks (native)"  # the report names the CPU path the latency used
    lat = result.report.passes[0]["metrics"]["latency"]["rnn"]
    note = next(n for n in row.notes if "batch-1" in n)
    assert ("SLOWER than dense" in note) == (lat["speedup"] < 1)  # the report says so when it is


def test_densify_keeps_gated_modules_and_structural_record(load_fixture):
    _, result = _run(load_fixture, "mlp", targets=["fc1"])
    assert isinstance(densify(result.model).fc1, GatedLinear)
    meta_kinds = [type(m).__name__ for m in result.model.modules()]
    assert "GatedLinear" in meta_kinds


def test_densify_gated_gives_dense_modules_with_every_stored_weight(load_fixture):
    """``densify(gated=True)``: the dense counterpart ``compress bench model`` times a gated model
    against; each gated module becomes a dense one holding its stored block values."""
    _, result = _run(load_fixture, "gru_lm", targets=["rnn", "decoder"])
    dense = densify(result.model, gated=True)
    assert not any(isinstance(m, (GatedLinear, GatedGRU, GatedLSTM)) for m in dense.modules())
    assert isinstance(dense.rnn, nn.GRU) and isinstance(dense.decoder, nn.Linear)
    gated = result.model
    assert_close(dense.decoder.weight, gated.decoder.to_dense_weight(), rtol=0, atol=0)
    for name, mod in gated.rnn.gated().items():
        assert_close(getattr(dense.rnn, name), mod.to_dense_weight(), rtol=0, atol=0)
    assert isinstance(densify(result.model).rnn, GatedGRU)  # the default still keeps them


def test_gated_pattern_accounting():
    p = Gated(64, 64, 0.5, "global", 0)
    assert p.kept((1024, 256)) == (32, 64)
    assert p.gate_macs((1024, 256)) == 256 * 64
    assert p.flops((1024, 256)) == 2 * (1024 * 256 // 2 + 256 * 64)
    low = Gated(64, 64, 0.5, "row", 8)
    assert low.kept((1024, 256)) == (32, 64)
    assert low.gate_macs((1024, 256)) == 256 * 8 + 8 * 64
    assert pattern_from_dict(low.to_dict()) == low
    assert low.storage_bytes(torch.ones(1024, 256, dtype=torch.bool), 4) == (1024 * 256 + 256 * 8 + 8 * 64 + 64) * 4


# -- bad input: clear errors before any training -------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, -0.5, 1.5])
def test_keep_outside_unit_interval(keep):
    with pytest.raises(RecipeError) as info:
        _recipe(keep=keep)
    assert info.value.path == "passes[0].keep"


@pytest.mark.parametrize("fields,where", [
    ({"block": [512, 512]}, "passes[0].block"),  # one block in the whole matrix
    ({"block": [4, 32], "mode": "row"}, "passes[0].block"),  # one block per block row
    ({"block": [40, 10], "keep": 0.9}, "passes[0].keep"),  # ceil(0.9 * 2) keeps both blocks
    ({"rank": -1}, "passes[0].rank"),
])
def test_degenerate_blocks_fail_before_training(load_fixture, fields, where):
    spec = load_fixture("mlp")
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    with pytest.raises(RecipeError) as info:
        compressor.Pipeline(_recipe(targets=["fc1"], **fields)).run(spec, console=Console(file=io.StringIO()))
    assert info.value.path == where
    assert all(torch.equal(v, spec.model.state_dict()[k]) for k, v in before.items())  # nothing changed


def test_functional_target_has_no_module_to_wrap(load_fixture):
    spec = load_fixture("functional_linear")
    with pytest.raises(TargetError, match=r"passes\[0\]\.targets\[0\].*functional"):
        compressor.Pipeline(_recipe(targets=["proj"])).run(spec, console=Console(file=io.StringIO()))


def test_totals_of_a_gated_model_count_the_dense_weights_once_and_each_gate_once(load_fixture):
    """Whole-model bytes: dense = the model's own parameters (no gate networks); compressed = those with
    each gated weight stored whole plus its gate. FLOPs: the gated rows' (kept blocks + gate)."""
    _, result = _run(load_fixture, "mlp", targets=["fc1"])
    dense = load_fixture("mlp").model
    dense_bytes = sum(4 * p.numel() for p in dense.parameters())
    K = math.ceil(48 / 8) * math.ceil(20 / 4)  # fc1 is 48 x 20 in blocks of 8 x 4
    gate_params = 20 * K + K  # the paper's gate: Linear(in, K)
    assert gate_params == sum(p.numel() for p in result.model.fc1.gate.parameters())
    t = result.report.totals
    assert t.model_params == sum(p.numel() for p in dense.parameters())
    assert t.model_dense_bytes == dense_bytes
    assert t.model_compressed_bytes == dense_bytes + 4 * gate_params
    kept = math.ceil(0.5 * K)
    fc1_flops = 2 * (round(48 * 20 * kept / K) + 20 * K)
    assert t.dense_flops == 2 * (48 * 20 + 36 * 48 + 5 * 36)
    assert t.compressed_flops == fc1_flops + 2 * (36 * 48 + 5 * 36)


def test_bidirectional_layers_are_gated_and_say_why_no_step_is_timed(load_fixture):
    """A bidirectional LSTM has no streaming step: the batch-1 step timing failed after the training
    ('step() needs a unidirectional model'); now the run completes and the report says why."""
    spec, result = _run(load_fixture, "bilstm", targets=["rnn"], block=[4, 4])
    rows = {r.name: r for r in result.report.layers}
    notes = rows["rnn.weight_hh_l0_reverse"].notes
    assert any("bidirectional layer has no streaming step" in n for n in notes)
    assert isinstance(result.model.rnn, GatedLSTM)


def test_a_gate_dearer_than_its_layer_is_noted(load_fixture):
    """Tiny blocks on a small layer make the gate network cost more than the layer it gates."""
    _, result = _run(load_fixture, "mlp", targets=["fc1"], block=[1, 1], keep=0.5, latency_repeats=0)
    assert any("saves no compute" in n for n in result.report.layers[0].notes)
