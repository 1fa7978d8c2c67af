"""Capture: which weight matrices are found, by which method, with gate ranges and tied weights."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from compressor.capture import capture
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())


def names(result):
    return [t.name for t in result.targets]


def test_mlp_by_fx(load_fixture):
    spec = load_fixture("mlp")
    result = capture(spec.model, spec.example_inputs)
    assert result.method == "fx"
    assert names(result) == ["fc1.weight", "fc2.weight", "head.weight"]
    assert [t.kind for t in result.targets] == ["linear"] * 3
    assert result.targets[0].shape == (48, 20)


@pytest.mark.parametrize("factory,cell,gates", [("lstm_lm", "lstm", "ifgo"), ("gru_lm", "gru", "rzn")])
def test_recurrent_weights_and_gate_rows(load_fixture, factory, cell, gates):
    spec = load_fixture(factory)
    result = capture(spec.model, spec.example_inputs)
    rnn = spec.model.rnn
    expected = [f"rnn.weight_{k}_l{layer}" for layer in range(2) for k in ("ih", "hh")] + ["decoder.weight"]
    assert names(result) == expected
    for t in result.targets[:-1]:
        assert t.kind == cell
        h = rnn.hidden_size
        assert t.gates == tuple((g, i * h, (i + 1) * h) for i, g in enumerate(gates))
        assert t.shape == tuple(getattr(rnn, t.param_name).shape)


def test_bidirectional_multilayer_lstm_has_reverse_weights(load_fixture):
    spec = load_fixture("bilstm")
    got = set(names(capture(spec.model, spec.example_inputs)))
    expected = {f"rnn.weight_{k}_l{layer}{sfx}" for layer in range(2) for k in ("ih", "hh") for sfx in ("", "_reverse")}
    assert expected | {"decoder.weight"} == got
    assert spec.model.rnn.weight_ih_l1.shape[1] == 40  # the second layer reads both directions


def test_shape_control_flow_falls_back_to_export(load_fixture):
    spec = load_fixture("shape_dependent")
    result = capture(spec.model, spec.example_inputs)
    assert result.method == "export"
    assert result.attempts[0][0] == "fx" and result.attempts[0][1] != "ok"
    assert names(result) == ["fc.weight"]


def test_data_dependent_model_falls_back_to_walk_and_still_compresses(load_fixture, capsys):
    spec = load_fixture("data_dependent")
    result = capture(spec.model, spec.example_inputs)
    assert result.method == "walk"
    assert capsys.readouterr() == ("", "")  # the failed export's graph dumps stay out of the user's terminal
    assert [a[0] for a in result.attempts] == ["fx", "export", "walk"]
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "unstructured_prune", "sparsity": 0.5}]})
    out = compressor.Pipeline(recipe).run(spec, console=QUIET)
    assert out.report.capture["method"] == "walk"
    for row in out.report.layers:
        assert row.sparsity == pytest.approx(0.5)


def test_functional_linear_on_own_parameter(load_fixture):
    spec = load_fixture("functional_linear")
    result = capture(spec.model, spec.example_inputs)
    by_name = result.by_name()
    assert by_name["proj"].kind == "functional"
    assert by_name["proj"].shape == (24, 16)
    assert by_name["out.weight"].kind == "linear"
    # the walk cannot see F.linear: only tracing finds it
    assert "proj" not in names(capture(spec.model, methods=("walk",)))


def test_tied_weights_are_one_target_and_stay_tied(load_fixture):
    spec = load_fixture("tied_lm")
    result = capture(spec.model, spec.example_inputs)
    tied = [t for t in result.targets if t.aliases]
    assert len(tied) == 1 and tied[0].name == "decoder.weight" and tied[0].aliases == ("embedding.weight",)
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "unstructured_prune", "sparsity": 0.75}]})
    out = compressor.Pipeline(recipe).run(spec, console=QUIET)
    model = out.model
    assert model.decoder.weight is model.embedding.weight
    assert float((model.embedding.weight == 0).float().mean()) == pytest.approx(0.75)
    assert [r.name for r in out.report.layers].count("decoder.weight") == 1


def test_export_capture_agrees_with_fx_on_the_builtin_model():
    from compressor.models.lstm_lm import LSTMLanguageModel

    model = LSTMLanguageModel().eval()
    fx = capture(model, model.example_inputs(), methods=("fx",))
    ex = capture(model, model.example_inputs(), methods=("export",))
    assert fx.targets == ex.targets
    assert len(fx.targets) == 5


def test_builtin_encoder_captures_every_projection():
    spec = compressor.load_model("tiny-encoder")
    result = capture(spec.model, spec.example_inputs)
    assert result.method == "fx"
    expected = [f"blocks.{i}.{n}.weight" for i in range(2) for n in ("q", "k", "v", "o", "fc1", "fc2")]
    assert names(result) == expected


class _TransformerLM(nn.Module):
    """nn.TransformerEncoder LM with a head tied to the embedding: fx sees one Linear (the head)."""

    def __init__(self, vocab=40, d=16, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens):
        return self.head(self.encoder(self.embedding(tokens)))


def test_torch_nn_transformer_layers_are_captured_and_pruned(tmp_path):
    torch.manual_seed(0)
    model = _TransformerLM().eval()
    x = torch.randint(0, 40, (2, 8))
    result = capture(model, (x,))
    names = {t.name for t in result.targets}
    for i in range(2):
        for part in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
            assert f"encoder.layers.{i}.{part}" in names
    assert result.method == "fx" and "module walk" in result.attempts[-1][1]  # said, not silent
    spec = compressor.ModelSpec(model, (x,), {"kind": "factory", "ref": "test"})
    run = compressor.Pipeline(parse_recipe({"version": 1, "passes": [
        {"pass": "unstructured_prune", "targets": ["encoder"], "sparsity": 0.5}]})).run(
        spec, console=Console(file=io.StringIO()))
    in_proj = run.model.encoder.layers[0].self_attn.in_proj_weight
    assert float((in_proj == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    rows = {r.name: r for r in run.report.layers}
    assert rows["encoder.layers.1.linear2.weight"].sparsity == pytest.approx(0.5, abs=0.01)


def test_targets_by_module_class_and_the_layers_listing(capsys):
    """'Linear' selects every nn.Linear (MultiheadAttention's out_proj too), 'MultiheadAttention'
    its input projections; `compress layers` lists each layer with its class."""
    import json

    from compressor.cli import main as cli_main
    from compressor.targeting import resolve_targets

    model = _TransformerLM().eval()
    targets = capture(model, (torch.randint(0, 40, (2, 8)),)).targets
    linear = {t.name for t in resolve_targets(targets, ["Linear"], [], ("linear", "functional"), "passes[0]")}
    assert linear == {t.name for t in targets if t.kind == "linear"}  # out_proj's class is a Linear subclass
    assert "encoder.layers.1.self_attn.out_proj.weight" in linear and "encoder.layers.0.linear1.weight" in linear and "encoder.layers.0.self_attn.in_proj_weight" not in linear
    attention = {t.name for t in resolve_targets(targets, ["MultiheadAttention"], [], ("functional",), "passes[0]")}
    assert attention == {f"encoder.layers.{i}.self_attn.in_proj_weight" for i in range(2)}
    assert cli_main(["layers", "--json"]) == 0  # the built-in LM
    listing = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["class"], t["kind"]) for t in listing["layers"]][-1] == ("decoder.weight", "Linear", "linear")
    assert listing["layers"][0]["gates"] == ["i", "f", "g", "o"] and listing["method"] == "fx"
