"""swap_kernels decisions and replay; ONNX export checked in a real ONNX Runtime session."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from fixture_models import load_trusted, ref  # tests/fixture_models.py: passes the suite's own factory
from compressor.errors import CompressorError, RecipeError
from compressor.export import FUSED_MARGIN, ExportError, export_model, input_specs
from compressor.kernels import BlockSparseLinear, NMLinear, SparseLSTM
from compressor.loading import ModelSpec
from compressor.patterns import pattern_from_dict
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())


def run(spec, passes, out=None, export=None):
    recipe = {"version": 1, "passes": passes} | ({"export": export} if export else {})
    return compressor.Pipeline(parse_recipe(recipe)).run(spec, out=out, console=QUIET)


def test_forced_swaps_keep_outputs_and_replay_on_load(load_fixture, tmp_path):
    spec = load_fixture("lstm_lm")
    x = spec.example_inputs[0]
    with torch.no_grad():
        dense_masked = None
    result = run(spec, [
        {"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True},
        {"pass": "nm_prune", "targets": ["decoder"]},
        {"pass": "swap_kernels", "force": True, "repeats": 2, "backend": "torch"},
    ], out=tmp_path / "art")
    model = result.model
    # the records on disk, written out: the JSON artifacts held before the records were typed, so those load too
    assert compressor.read_metadata(tmp_path / "art")["replacements"] == [
        {"module": "rnn", "kind": "sparse_lstm", "options": {"block": [4, 4], "backend": "torch"}},
        {"module": "decoder", "kind": "nm_linear", "options": {"n": 2, "m": 4, "backend": "torch"}}]
    assert isinstance(model.rnn, SparseLSTM) and isinstance(model.decoder, NMLinear)
    # reference: the dense model with the saved masks applied
    reference = load_trusted(tmp_path / "art")
    assert isinstance(reference.rnn, SparseLSTM)
    plain = load_fixture("lstm_lm").model  # same init is not guaranteed: build the dense reference from the weights
    state = load_trusted(tmp_path / "art").state_dict()
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model(x), rtol=0, atol=0)
    rows = {r.name: r for r in result.report.layers}
    assert rows["decoder.weight"].kernel == "nm_linear" and rows["rnn.weight_hh_l0"].kernel == "sparse_lstm"
    # the speed-up in the table is the pass's own measurement (the median ratio, inside its interval)
    swap = result.report.passes[-1]["metrics"]["rnn"]
    assert swap["installed"] and rows["rnn.weight_hh_l0"].speedup == round(swap["speedup"], 3)
    assert swap["speedup_low"] <= swap["speedup"] <= swap["speedup_high"]
    # the saved weights are packed in their patterns' layouts, whatever kernels were installed
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "art" / "model.safetensors"))
    assert "rnn.weight_hh_l0" not in saved and "decoder.weight" not in saved
    layouts = compressor.read_metadata(tmp_path / "art")["layouts"]
    assert layouts["rnn.weight_hh_l0"]["layout"] == "balanced_block" and layouts["decoder.weight"]["layout"] == "nm"
    del plain, state, dense_masked


def test_swap_declines_a_slower_kernel_and_reports_it(load_fixture):
    spec = load_fixture("mlp")
    result = run(spec, [
        {"pass": "nm_prune", "targets": ["fc1"]},
        {"pass": "swap_kernels", "min_speedup": 1000.0, "repeats": 2},
    ])
    row = result.report.layers[0]
    assert row.kernel.startswith("dense (declined nm_linear") and isinstance(result.model.fc1, nn.Linear)
    # declined: the mask is still there and the weights stay pruned
    assert float((result.model.fc1.weight == 0).float().mean()) == pytest.approx(0.5)


def test_swap_installs_when_the_measured_ratio_clears_the_bar():
    # the decision itself, without betting on timings: any measured ratio clears a tiny bar
    # (speed figures live in `compress bench kernels`, not in tests)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 192)).eval()
    spec = ModelSpec(model, (torch.randn(1, 256),), {"kind": "factory", "ref": "x:y"})
    x = torch.randn(3, 256)
    result = run(spec, [{"pass": "block_prune", "block": [32, 32], "sparsity": 0.75, "balanced": True},
                        {"pass": "swap_kernels", "min_speedup": 1e-9, "repeats": 2}])
    assert isinstance(result.model[0], BlockSparseLinear)
    assert result.report.layers[0].kernel == "block_sparse_linear"
    assert result.report.passes[-1]["metrics"]["0"]["installed"] is True
    w = result.model[0].to_dense_weight()
    torch.testing.assert_close(result.model(x), x @ w.T + result.model[0].bias, rtol=1e-5, atol=1e-5)


def test_triton_backend_without_gpu_is_a_clear_error(load_fixture):
    with pytest.raises(CompressorError, match="triton"):
        run(load_fixture("mlp"), [{"pass": "nm_prune"}, {"pass": "swap_kernels", "backend": "triton"}])


def test_recipe_backends_are_the_backend_enum():
    """A recipe names every path (native included); anything else is one line listing them."""
    from compressor.kernels import Backend

    for name in ("auto", "torch", "triton", "native"):
        recipe = parse_recipe({"version": 1, "passes": [{"pass": "swap_kernels", "backend": name}]})
        assert recipe.passes[0].config.backend is Backend(name)
        assert f"backend: {name}\n" in recipe.to_yaml()  # written back as the plain string
    for bad in ("cuda", "Native", 1):
        with pytest.raises(RecipeError, match=r"passes\[0\]\.backend: .* allowed: 'auto', 'torch', 'triton', 'native'"):
            parse_recipe({"version": 1, "passes": [{"pass": "swap_kernels", "backend": bad}]})


def test_native_backend_is_recorded_and_runs_the_compiled_recurrence(load_fixture, tmp_path, monkeypatch):
    """backend: native installs the kernels with that backend and records it; the loaded model takes the
    compiled time loop and equals the dense masked model; without the library it is refused up front."""
    from compressor.kernels import Backend, native
    from compressor.swaps import densify

    if native.unavailable_reason() is not None:
        pytest.skip(native.unavailable_reason())
    spec = load_fixture("lstm_lm")
    passes = [{"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True},
              {"pass": "swap_kernels", "force": True, "repeats": 2, "backend": "native"}]
    result = run(spec, passes, out=tmp_path / "art")
    records = compressor.read_metadata(tmp_path / "art")["replacements"]
    assert records == [{"module": "rnn", "kind": "sparse_lstm", "options": {"block": [4, 4], "backend": "native"}}]
    loaded = load_trusted(tmp_path / "art")
    assert {m.backend for m in loaded.rnn.modules() if hasattr(m, "backend")} == {Backend.NATIVE}
    calls = []
    real = native.rnn_layer
    monkeypatch.setattr(native, "rnn_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = spec.example_inputs[0]
    with torch.no_grad():
        got, want = loaded(x), densify(result.model)(x)
    assert calls  # the compiled time loop ran
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(native, "unavailable_reason", lambda: "disabled by COMPRESSOR_NATIVE=0")
    with pytest.raises(CompressorError, match="backend 'native' cannot run here: disabled by COMPRESSOR_NATIVE=0"):
        run(load_fixture("lstm_lm"), passes)


def test_recipe_export_writes_verified_onnx_with_step_graph(load_fixture, tmp_path):
    import onnx
    import onnxruntime as ort

    spec = load_fixture("lstm_lm")
    run(spec, [{"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True},
               {"pass": "swap_kernels", "force": True, "repeats": 2}],
        out=tmp_path / "art", export={"onnx": True})
    files = set(os.listdir(tmp_path / "art"))
    assert {"model.onnx", "rnn.step.onnx"} <= files
    ops = {n.op_type for n in onnx.load(str(tmp_path / "art" / "model.onnx")).graph.node}
    assert not any(n.domain not in ("", "ai.onnx") for n in onnx.load(str(tmp_path / "art" / "model.onnx")).graph.node)
    assert "Gather" in ops or "GatherElements" in ops
    # an independent check: run the graph ourselves against the loaded model
    model = load_trusted(tmp_path / "art")
    x = torch.randint(0, 30, (2, 7))
    sess = ort.InferenceSession(str(tmp_path / "art" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)
    report = compressor.read_report(tmp_path / "art")
    assert report.metrics["onnx_rel_error(model.onnx)"]["after"] < 1e-4
    # the LSTM's rows say which graph model.onnx runs for it, and the graph holds that one
    notes = {n for row in report.layers if row.name.startswith("rnn.") for n in row.notes if "model.onnx runs as" in n}
    assert len(notes) == 1
    fused = "fused op" in notes.pop()
    top = [n.op_type for n in onnx.load(str(tmp_path / "art" / "model.onnx")).graph.node]
    assert ("LSTM" in top) == fused and ("Scan" in top) == (not fused)


def test_export_runs_each_sparse_recurrent_module_as_the_faster_ort_graph(tmp_path, monkeypatch):
    """export_model times a SparseLSTM's Scan graph against ORT's fused LSTM op on its own input and
    writes the faster into model.onnx (the caller's model keeps its sparse module); ORT matches torch."""
    import onnx

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = SparseLSTM.from_dense(nn.LSTM(8, 16, batch_first=True),
                                             {"weight_hh_l0": (torch.rand(16, 4) < 0.5).repeat_interleave(4, 0)
                                              .repeat_interleave(4, 1)}, block=(4, 4))
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    model = LM().eval()
    results = export_model(model, input_specs((torch.randn(2, 6, 8),)), tmp_path, step=False)
    choice = results["model"]["recurrent"]["rnn"]
    from compressor.export import FUSED_MARGIN

    assert choice["graph"] == ("dense" if choice["dense_ms"] < FUSED_MARGIN * choice["scan_ms"] else "scan")
    assert min(choice["dense_ms"], choice["scan_ms"]) > 0
    top = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ("LSTM" in top) == (choice["graph"] == "dense") and ("Scan" in top) == (choice["graph"] == "scan")
    assert isinstance(model.rnn, SparseLSTM) and results["model"]["max_rel_error"] < 1e-4

    # a measurement that fails costs the choice, not the export: the module keeps its Scan graph
    def broken(self):
        raise RuntimeError("no dense form here")

    monkeypatch.setattr(SparseLSTM, "to_dense", broken)
    (tmp_path / "again").mkdir()
    results = export_model(model, input_specs((torch.randn(2, 6, 8),)), tmp_path / "again", step=False)
    assert results["model"]["recurrent"]["rnn"] == {"graph": "scan", "product": "input_left",
                                                    "error": "RuntimeError: no dense form here"}
    assert "Scan" in [n.op_type for n in onnx.load(str(tmp_path / "again" / "model.onnx")).graph.node]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_both_block_product_orders_export_the_same_recurrent_model(kind, tmp_path):
    """The exported Scan's recurrent block product runs with the input or the blocks as the left
    MatMul operand (chosen by timing at export); ORT matches the dense masked nn.LSTM/nn.GRU either
    way, the graph holds the order asked for, and the module gets its own order back."""
    import onnx
    import onnxruntime as ort

    from compressor.export import _product_orders
    from compressor.kernels import SparseGRU

    torch.manual_seed(0)
    H, gates = 16, 4 if kind == "lstm" else 3
    dense = (nn.LSTM if kind == "lstm" else nn.GRU)(8, H)
    grid = torch.zeros(gates * H // 4, H // 4, dtype=torch.bool)
    grid[torch.arange(grid.shape[0]).unsqueeze(1), torch.rand(grid.shape).argsort(1)[:, :2]] = True  # 2 of 4 per row
    mask = grid.repeat_interleave(4, 0).repeat_interleave(4, 1)
    rnn = (SparseLSTM if kind == "lstm" else SparseGRU).from_dense(dense, {"weight_hh_l0": mask}, block=(4, 4),
                                                                    layout="balanced").eval()
    with torch.no_grad():
        dense.weight_hh_l0.mul_(mask)
    x = torch.randn(7, 3, 8)
    expected = dense(x)[0]
    for product in ("input_left", "weights_left"):
        path = tmp_path / f"{product}.onnx"
        with _product_orders(rnn, {"": product}):
            compressor.kernels.export_onnx(rnn, (x,), path)
        assert "product_order" not in rnn.__dict__ and rnn.product_order == "input_left"
        graph = onnx.load(str(path)).graph
        body = [a.g for n in graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"][0]
        matmul = [n for n in body.node if n.op_type == "MatMul"][0]
        first = matmul.input[0]
        produced_in_body = {o for n in body.node for o in n.output}
        assert (first not in produced_in_body) == (product == "weights_left")  # the blocks come from outside the loop
        if kind == "lstm":  # b_hh went into the input projection: the step adds gates and cell state only
            assert [n.op_type for n in body.node].count("Add") == 2
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
        # the step graph in that order: one step of the dense module from a given state
        h0 = torch.randn(1, 3, H)
        state = (h0, torch.randn(1, 3, H)) if kind == "lstm" else (h0,)
        step_path = tmp_path / f"{product}.step.onnx"
        with _product_orders(rnn, {"": product}):
            compressor.kernels.export_onnx(rnn.step_module().eval(), (x[0], *state), step_path)
        sess = ort.InferenceSession(str(step_path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), (x[0], *state))})[0]
        torch.testing.assert_close(torch.from_numpy(got), dense(x[:1], state if kind == "lstm" else h0)[0][0],
                                   rtol=1e-4, atol=1e-5)
    if kind == "gru":
        return  # the choice below is the same code for both kinds (and costs seven exports)
    # export_model times both orders (and the fused op) for model.onnx and the step graph, keeps the faster
    results = export_model(nn.Sequential(rnn), input_specs((x,)), tmp_path, step_batch=3)
    choice = results["model"]["recurrent"]["0"]
    assert set(choice["ms"]) == {"input_left", "weights_left", "dense"}
    faster = choice["ms"]["weights_left"] < FUSED_MARGIN * choice["ms"]["input_left"]
    assert choice["product"] == ("weights_left" if faster else "input_left")
    assert choice["scan_ms"] == choice["ms"][choice["product"]]
    entry = results["0.step.onnx"]
    assert set(entry["ms"]) == {"input_left", "weights_left"} and entry["max_rel_error"] < 1e-4
    faster = entry["ms"]["weights_left"] < FUSED_MARGIN * entry["ms"]["input_left"]
    assert entry["product"] == ("weights_left" if faster else "input_left")


def test_reports_with_the_old_onnx_metric_read_in_the_current_form(tmp_path):
    """report.json written before the per-graph metrics kept {"onnx": {"model": e, ...}}."""
    from compressor.report import Report

    data = {"model": "m", "capture": {}, "layers": [], "totals": {k: 0 for k in (
        "params", "nonzero", "sparsity", "dense_bytes", "compressed_bytes", "dense_flops", "compressed_flops",
        "model_params", "model_dense_bytes", "model_compressed_bytes")},
        "metrics": {"perplexity": {"before": 3.0, "after": 3.5}, "onnx": {"model": 1e-6, "rnn.step.onnx": 2e-6}}}
    metrics = Report.from_dict(data).metrics
    assert metrics == {"perplexity": {"before": 3.0, "after": 3.5}, "onnx_rel_error(model.onnx)": {"after": 1e-6},
                       "onnx_rel_error(rnn.step.onnx)": {"after": 2e-6}}


def test_step_graph_matches_the_full_sequence(tmp_path):
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8, num_layers=2)
    model = nn.Sequential()
    model.add_module("rnn", lstm)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = lstm

        def forward(self, x):
            return self.rnn(x)[0]

    results = export_model(Wrap().eval(), input_specs((torch.randn(5, 2, 6),)), tmp_path)
    assert results["rnn.step.onnx"]["max_rel_error"] < 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "rnn.step.onnx"), providers=["CPUExecutionProvider"])
    seq = torch.randn(5, 2, 6)
    h = c = torch.zeros(2, 2, 8).numpy()
    outs = []
    for t in range(5):  # stream the sequence through the step graph
        y, h, c = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], [seq[t].numpy(), h, c])))
        outs.append(torch.from_numpy(y))
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(outs), lstm(seq)[0], rtol=1e-4, atol=1e-5)


def test_failed_verification_leaves_no_file(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.raises(ExportError, match="nothing written"):
        export_model(model, input_specs((torch.randn(2, 4),)), tmp_path, tolerance=-1.0)
    assert os.listdir(tmp_path) == []


def test_export_cli(load_fixture, tmp_path, capsys):
    """``compress export`` through the CLI's ``main``, in-process (the entry point itself is
    tests/test_packaging.py's)."""
    from compressor.cli import main

    spec = load_fixture("mlp")
    run(spec, [{"pass": "block_prune", "block": [4, 4], "sparsity": 0.5}], out=tmp_path / "art")
    capsys.readouterr()
    # an artifact made from user code exports only when the caller names that code
    assert main(["export", str(tmp_path / "art")]) == 2
    assert "never runs code it names" in capsys.readouterr().err
    assert not list((tmp_path / "art").glob("*.onnx"))
    command = ["export", str(tmp_path / "art"), "--model", ref("mlp")]
    code = main(command)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "model.onnx: max abs error" in out
    assert main(command) == 2 and "--force" in capsys.readouterr().err


def test_resume_after_a_crash_past_the_swap_pass(load_fixture, tmp_path, monkeypatch):
    """The checkpoint taken after swap_kernels (the last pass of a training recipe) resumes: the
    kernel modules and the masks they baked in come back, and the artifact equals an
    uninterrupted run's."""
    import compressor.pipeline as pipeline

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 300)
    recipe = parse_recipe({"version": 1, "passes": [
        {"pass": "gradual_block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True,
         "freq": 2, "train": {"steps": 6, "eval_every": 0, "checkpoint_every": 0,
                              "task": {"name": "lm", "corpus": str(corpus), "batch_size": 4, "seq_len": 16}}},
        {"pass": "nm_prune", "targets": ["decoder"]},
        {"pass": "swap_kernels", "force": True, "repeats": 2},
    ]})

    def model():
        torch.manual_seed(0)  # the fixture is randomly initialised: the same weights for every run
        return load_fixture("lstm_lm")

    compressor.Pipeline(recipe).run(model(), out=tmp_path / "ref", console=QUIET)

    def crash(*args, **kwargs):
        raise OSError("disk full")  # stands in for a crash while the artifact is written

    monkeypatch.setattr(pipeline, "save_artifacts", crash)
    with pytest.raises(OSError):
        compressor.Pipeline(recipe).run(model(), out=tmp_path / "run", console=QUIET)
    monkeypatch.undo()
    result = compressor.Pipeline(recipe).run(model(), out=tmp_path / "run", resume=True, console=QUIET)
    assert isinstance(result.model.rnn, SparseLSTM) and isinstance(result.model.decoder, NMLinear)
    ref_masks, run_masks = compressor.load_masks(tmp_path / "ref"), compressor.load_masks(tmp_path / "run")
    assert ref_masks.keys() == run_masks.keys() and ref_masks
    for name in ref_masks:
        assert torch.equal(ref_masks[name], run_masks[name]), name
    x = model().example_inputs[0]
    with torch.no_grad():
        torch.testing.assert_close(load_trusted(tmp_path / "run")(x), load_trusted(tmp_path / "ref")(x))


def _dense_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_totals_of_a_swapped_model_are_those_of_its_dense_form(load_fixture, tmp_path):
    """Forced swaps (SparseLSTM, NMLinear) change no total: the whole model's bytes are its dense parameters
    with the captured weights priced in their saved layouts (swap_kernels gave 20.6M -> -54.0M for the LSTM)."""
    prune = [{"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True},
             {"pass": "nm_prune", "targets": ["decoder"]}]
    swapped = run(load_fixture("lstm_lm"), prune + [{"pass": "swap_kernels", "force": True, "repeats": 2}],
                  out=tmp_path / "art")
    assert isinstance(swapped.model.rnn, SparseLSTM) and isinstance(swapped.model.decoder, NMLinear)
    plain = run(load_fixture("lstm_lm"), prune)
    dense = load_fixture("lstm_lm").model  # same architecture, every parameter dense
    weights = {n: p for n, p in dense.named_parameters() if n.startswith(("rnn.weight", "decoder.weight"))}
    masks = compressor.load_masks(tmp_path / "art")
    stored = sum(pattern_from_dict(r.pattern_spec).storage_bytes(masks[r.name], 4) for r in swapped.report.layers)
    t = swapped.report.totals
    assert t.model_params == sum(p.numel() for p in dense.parameters())
    assert t.model_dense_bytes == _dense_bytes(dense)
    assert t.model_compressed_bytes == _dense_bytes(dense) - sum(4 * w.numel() for w in weights.values()) + stored
    assert 0 < t.model_compressed_bytes < t.model_dense_bytes
    assert t.dense_flops == 2 * sum(w.numel() for w in weights.values())
    assert t.compressed_flops == 2 * sum(int(masks[n].sum()) for n in weights)
    assert t == plain.report.totals  # the same masks without the swap: the same totals


# -- swap decisions from paired timings (synthetic: no test bets on real timings) --------------------

def _paired(ratios, drift=None):
    """Dense/sparse round times with the given per-round ratios, each round scaled by a common load factor."""
    drift = drift or [1.0] * len(ratios)
    return [r * f * 1e-3 for r, f in zip(ratios, drift)], [f * 1e-3 for f in drift]


def test_speedup_decision_installs_declines_or_calls_it_too_close():
    from compressor.passes.swap_kernels import speedup_decision

    spread = [i / 39 - 0.5 for i in range(40)]  # 40 rounds, offsets in [-0.5, 0.5]
    win = speedup_decision(*_paired([1.3 + 0.1 * e for e in spread]), min_speedup=1.05)
    assert win["decision"] == "install" and win["speedup"] == pytest.approx(1.3) and win["low"] >= 1.05
    loss = speedup_decision(*_paired([0.8 + 0.1 * e for e in spread]), min_speedup=1.05)
    assert loss["decision"] == "decline" and loss["high"] < 1.05
    # the rerun that flipped: a ratio of 1.049 with a spread of +-0.1 is neither faster nor slower than 1.05x
    close = speedup_decision(*_paired([1.049 + 0.2 * e for e in spread]), min_speedup=1.05)
    assert close["decision"] == "too close" and close["low"] < 1.05 <= close["high"]
    assert close["speedup"] == pytest.approx(1.049) and close["iqr"] == pytest.approx(0.1, rel=0.05)
    # load that drifts 1x..3x over the rounds hits both columns of a round alike: pairing cancels it
    drift = [1 + 2 * (i % 7) / 6 for i in range(40)]
    steady = speedup_decision(*_paired([1.2] * 40, drift), min_speedup=1.05)
    assert steady["decision"] == "install" and steady["low"] == pytest.approx(1.2) == steady["high"]
    with pytest.raises(ValueError, match="paired"):
        speedup_decision([1.0, 2.0], [1.0], min_speedup=1.05)


def test_a_swap_too_close_to_call_stays_dense_and_says_why(load_fixture, monkeypatch):
    import compressor.passes.swap_kernels as swap

    spread = [i / 39 - 0.5 for i in range(40)]
    dense_s, sparse_s = _paired([1.049 + 0.2 * e for e in spread])

    def fake_timing(fns, repeats=20, warmup=3):
        return {name: {"median_s": sorted(s)[20], "min_s": min(s), "runs": 40, "samples_s": s}
                for name, s in zip(fns, (dense_s, sparse_s))}

    monkeypatch.setattr(swap, "time_interleaved", fake_timing)
    result = run(load_fixture("mlp"), [{"pass": "nm_prune", "targets": ["fc1"]}, {"pass": "swap_kernels"}])
    row = result.report.layers[0]
    assert isinstance(result.model.fc1, nn.Linear)
    assert row.kernel.startswith("dense (too close to call for nm_linear: 1.049x, 95% interval ")
    assert row.kernel.endswith("over 40 rounds, spans 1.05x)")
    assert float((result.model.fc1.weight == 0).float().mean()) == pytest.approx(0.5)  # the mask stayed
    metrics = result.report.passes[-1]["metrics"]
    assert metrics["fc1"]["decision"] == "too close" and metrics["fc1"]["installed"] is False
    load = metrics["machine_load"]
    assert load["cpu_count"] == os.cpu_count() and set(load["before"]) == {"load_1m", "load_5m", "load_15m"}
