"""``compress bench model DIR`` on real artifacts (benchmarks are not tests: no timing asserted)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json

import pytest
import torch
from rich.console import Console

import compressor
from compressor.bench import model as bench_model
from compressor.cli import main as cli_main
from compressor.recipe import parse_recipe
from fixture_models import trusted_ref  # tests/fixture_models.py

pytestmark = pytest.mark.filterwarnings("ignore")


def _artifact(spec, passes, out):
    recipe = parse_recipe({"version": 1, "passes": passes})
    compressor.Pipeline(recipe).run(spec, out=out, console=Console(file=io.StringIO()))
    return out


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench_model.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv] + ["--model", trusted_ref(argv[0])])


def test_swapped_lstm_artifact_gets_torch_step_and_onnx_rows(load_fixture, tmp_path, capsys):
    torch.manual_seed(0)
    art = _artifact(load_fixture("lstm_lm"), [
        {"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.75, "balanced": True},
        {"pass": "swap_kernels", "force": True, "repeats": 2},
    ], tmp_path / "art")
    out = tmp_path / "bench.json"
    # --input 2x3: 3-step sequences, a smaller unrolled graph to export and check than the recorded 2x7
    assert bench_model.run(_args(art, "--input", "2x3:int64", "--repeats", 2, "--warmup", 1, "--copies", 2, "--threads", 1,
                                 "--json", out)) == 0
    payload = json.loads(out.read_text())
    assert payload["kernel_modules"] == {"sparse_lstm": 1}
    cases = {(r["section"], r["case"], r["impl"]) for r in payload["rows"]}
    assert {s for s, _, _ in cases} == {"torch", "step", "onnx"}
    assert {c for s, c, _ in cases if s == "onnx"} == {"model.onnx", "rnn.step.onnx, batch 1"}
    assert all({(s, c, "dense"), (s, c, "compressed")} <= cases for s, c, _ in cases)
    assert {i for s, _, i in cases if s == "step"} == {"dense", "nn.LSTM one-step call", "compressed"}
    # every ONNX graph was checked against torch before it was timed
    assert all(r["max_rel_error"] <= 1e-4 for r in payload["rows"] if r["section"] == "onnx")
    assert all(r["median_us"] > 0 for r in payload["rows"])
    printed = capsys.readouterr().out
    assert "sparse kernel modules: sparse_lstm x1" in printed
    # which graph model.onnx runs for the LSTM (the timed candidates), printed and kept in the JSON
    assert sum(line.startswith("model.onnx: rnn runs as") for line in payload["machine"]["engine_notes"]) == 1
    assert "model.onnx: rnn runs as" in printed
    assert "rnn.step.onnx: block products with the" in printed  # the step graph's timed operand order
    if importlib.util.find_spec("deepsparse") is None:  # no DeepSparse row, and one line saying why
        assert "DeepSparse row not run: deepsparse is not installed here" in printed
        assert not any("deepsparse" in r["impl"].lower() for r in payload["rows"])


def test_artifact_without_kernel_modules_says_both_columns_are_dense(load_fixture, tmp_path, capsys):
    art = _artifact(load_fixture("mlp"), [{"pass": "block_prune", "block": [4, 4], "sparsity": 0.5}], tmp_path / "art")
    out = tmp_path / "bench.json"
    assert bench_model.run(_args(art, "--sections", "torch", "--repeats", 2, "--warmup", 0, "--copies", 1,
                                 "--json", out)) == 0
    assert json.loads(out.read_text())["kernel_modules"] == {}
    assert "no sparse kernel modules in this artifact" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--sections", "torch,gpu"], "--sections"),
    (["--copies", "0"], "--copies must be at least 1"),
    (["--input", "2xq"], "is not an input spec"),
    (["--deepsparse-python", "/nonexistent/python"], "--deepsparse-python /nonexistent/python: not an executable"),
    (["--sections", "torch", "--deepsparse-python", "/nonexistent/python"], "times the onnx section"),
])
def test_bad_arguments_are_named_before_any_work(load_fixture, tmp_path, capsys, argv, message):
    art = _artifact(load_fixture("mlp"), [{"pass": "block_prune", "block": [4, 4], "sparsity": 0.5}], tmp_path / "art")
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "model", str(art), *argv, "--model", trusted_ref(art), "--json", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_directory_that_is_no_artifact_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["bench", "model", str(tmp_path / "empty"), "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "is not a compressor artifact" in err and "model.safetensors" in err
    assert cli_main(["bench", "model", str(tmp_path / "missing")]) == 2
    assert "no such artifact directory" in capsys.readouterr().err


@pytest.mark.parametrize("kind", [torch.nn.LSTM, torch.nn.GRU])
def test_the_dense_step_reference_is_the_recurrent_layer_s_step(kind):
    """The stacked cells that streaming steps are timed against compute nn.LSTM/nn.GRU's step."""
    from compressor.bench.common import cells_step, rnn_cells

    torch.manual_seed(0)
    rnn = kind(6, 5, num_layers=3).double()
    x = torch.randn(2, 6, dtype=torch.float64)
    h = torch.randn(3, 2, 5, dtype=torch.float64)
    state = (h, torch.randn_like(h)) if kind is torch.nn.LSTM else h
    expected, _ = rnn(x.unsqueeze(0), state)
    with torch.no_grad():
        got = cells_step(rnn_cells(rnn), x, state)
    torch.testing.assert_close(got, expected[0].detach())


def test_identical_columns_that_differ_beyond_noise_are_flagged():
    """Two columns running the same dense ops whose ratio interval excludes 1 are noise, said aloud
    (synthetic rows: no test bets on real timings)."""
    rows = [{"case": "forward (2x32)", "impl": "dense", "speedup_vs_dense": 1.0},
            {"case": "forward (2x32)", "impl": "compressed", "speedup_vs_dense": 0.57, "ratio_low": 0.41,
             "ratio_high": 0.74},
            {"case": "model.onnx", "impl": "compressed", "speedup_vs_dense": 0.98, "ratio_low": 0.9, "ratio_high": 1.07}]
    warnings = bench_model.noise_warnings(rows, same_ops=True)
    assert len(warnings) == 1 and "forward (2x32): identical columns measured 0.57x" in warnings[0]
    assert bench_model.noise_warnings(rows, same_ops=False) == []  # real kernels: a ratio is a result
