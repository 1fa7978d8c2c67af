"""Other engines beside ours in the benchmarks (compressor/bench/engines.py): products checked against
dense math, the ONNX DeepSparse reads checked against the original graph, the worker protocol on a
stand-in engine. The rows of real engines skip when their package is absent (benchmarks, not tests,
say how fast they are)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from compressor.bench import engines
from compressor.errors import CompressorError
from compressor.timing import SelfTimed, time_interleaved

pytestmark = pytest.mark.filterwarnings("ignore")


def _block_sparse(out: int, inp: int, block: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float32 weight with about half of its ``block`` blocks zero (partial edge blocks too), and a bias."""
    rng = np.random.default_rng(seed)
    grid = rng.random((-(-out // block), -(-inp // block))) < 0.5
    mask = np.kron(grid, np.ones((block, block), dtype=bool))[:out, :inp]
    return (rng.standard_normal((out, inp)) * mask).astype(np.float32), rng.standard_normal(out).astype(np.float32)


@pytest.mark.parametrize("shape,block,batch", [((48, 40), 8, 1), ((50, 37), 8, 3), ((64, 64), 16, 5)])
def test_scipy_bsr_row_computes_the_dense_product(shape, block, batch):
    weight, bias = _block_sparse(*shape, block)
    x = np.random.default_rng(1).standard_normal((batch, shape[1])).astype(np.float32)
    prepare, linear = engines.scipy_bsr_linear(weight, bias, block)
    expected = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
    np.testing.assert_allclose(linear(prepare(x)), expected, rtol=1e-5, atol=1e-5)


def test_mkl_row_computes_the_dense_product():
    # not pytest.importorskip: importing sparse_dot_mkl before mkl_unavailable_reason points it at MKL's
    # runtime fails with an ImportError that importorskip does not take for a missing package
    reason = engines.mkl_unavailable_reason()
    if reason:
        pytest.skip(reason)
    weight, bias = _block_sparse(50, 37, 8)
    x = np.random.default_rng(1).standard_normal((3, 37)).astype(np.float32)
    prepare, linear = engines.mkl_bsr_linear(weight, bias, 8, threads=1)
    np.testing.assert_allclose(linear(prepare(x)), x.astype(np.float64) @ weight.T.astype(np.float64) + bias,
                               rtol=1e-5, atol=1e-5)


def test_self_timed_callables_report_their_own_time():
    t = time_interleaved({"remote": lambda i: SelfTimed(0.25 + i), "local": lambda i: None}, repeats=3, warmup=1)
    assert t["remote"]["samples_s"] == [0.25, 1.25, 2.25]
    assert all(s < 0.25 for s in t["local"]["samples_s"])


def _pruned_lm_export(tmp_path):
    from compressor.export import export_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 32), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 20)).eval()
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_((torch.rand_like(layer.weight) >= 0.8).float())
    specs = [{"shape": [1, 6], "dtype": "int64", "high": 20}]
    (tmp_path / "dense").mkdir()
    export_model(model, specs, tmp_path / "dense", step=False)
    return model, tmp_path / "dense" / "model.onnx"


def test_deepsparse_onnx_is_the_zero_filled_graph_at_opset_17(tmp_path):
    from compressor.kernels import ort_session

    model, path = _pruned_lm_export(tmp_path)
    assert any(i.name.endswith(".bits") for i in onnx.load(path).graph.initializer)  # exported compacted
    out = engines.deepsparse_onnx(path, tmp_path / "ds.onnx")
    graph = onnx.load(out)
    assert graph.ir_version == 8
    # only the standard domain: DeepSparse's bundled ORT rejects the versions of ORT's own domains
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", engines.DEEPSPARSE_OPSET)]
    assert not {"BitShift", "BitwiseAnd", "CumSum", "Where"} & {n.op_type for n in graph.graph.node}
    # the pruned weights are plain initializers again (as stored or transposed), zeros and all
    inits = [onnx.numpy_helper.to_array(i) for i in graph.graph.initializer]
    for layer in (model[1], model[3]):
        w = layer.weight.detach().numpy()
        assert any(np.array_equal(a, w) or np.array_equal(a, w.T) for a in inits if a.ndim == 2)
    tokens = torch.randint(0, 20, (1, 6))
    session = ort_session(out)
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: tokens.numpy()})[0],
                               model(tokens).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_expand_undoes_compact_exactly(tmp_path):
    from compressor.kernels import export_onnx
    from compressor.onnx_compact import compact_initializers, expand_initializers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 37)).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) >= 0.7).float())
    original = onnx.load(export_onnx(model, (torch.randn(2, 64),), tmp_path / "m.onnx"))
    graph = onnx.load(tmp_path / "m.onnx")
    assert expand_initializers(graph) == []  # never compacted: nothing to do
    assert list(compact_initializers(graph)) and expand_initializers(graph)
    arrays = lambda g: {i.name: onnx.numpy_helper.to_array(i) for i in g.graph.initializer}  # noqa: E731
    before, after = arrays(original), arrays(graph)
    assert sorted(before) == sorted(after)
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array)
    assert [n.op_type for n in graph.graph.node] == [n.op_type for n in original.graph.node]


# -- the DeepSparse worker on a stand-in engine ------------------------------------------------

#: a stand-in ``deepsparse`` package: ``Engine`` runs the graph in ONNX Runtime (or fails on request),
#: so the worker's protocol and the benchmark's row are tested where DeepSparse is not installed
_STAND_IN = '''
import os
import onnxruntime as ort

class Engine:
    def __init__(self, model, batch_size=1, num_cores=None):
        if os.environ.get("STAND_IN_FAIL"):
            raise RuntimeError("stand-in engine: " + os.environ["STAND_IN_FAIL"])
        self._s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.batch_size, self.num_cores = batch_size, num_cores

    def run(self, inputs):
        return self._s.run(None, dict(zip([i.name for i in self._s.get_inputs()], inputs)))

    def __str__(self):
        return f"stand-in Engine batch_size: {self.batch_size} num_cores: {self.num_cores}"
'''


@pytest.fixture
def stand_in_deepsparse(tmp_path, monkeypatch):
    package = tmp_path / "stand_in" / "deepsparse"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(_STAND_IN))
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    return sys.executable


def test_deepsparse_worker_protocol(tmp_path, stand_in_deepsparse):
    from compressor.kernels import ort_session

    _, path = _pruned_lm_export(tmp_path)
    ds = engines.deepsparse_onnx(path, tmp_path / "ds.onnx")
    copies = [[np.random.default_rng(c).integers(0, 20, (1, 6))] for c in range(2)]
    session = ort_session(ds)
    name = session.get_inputs()[0].name
    with engines.DeepSparseWorker(stand_in_deepsparse, ds, copies, threads=1, workdir=tmp_path) as worker:
        assert "num_cores: 1" in worker.engine and "batch_size: 1" in worker.engine
        for c, feed in enumerate(copies):  # each copy's outputs, from the worker's first run of it
            np.testing.assert_array_equal(worker.outputs[c][0], session.run(None, {name: feed[0]})[0])
        times = [worker.run(i) for i in range(3)]
        assert all(isinstance(t, SelfTimed) and 0 < t < 5 for t in times)


def test_deepsparse_worker_failure_is_one_line(tmp_path, stand_in_deepsparse, monkeypatch):
    _, path = _pruned_lm_export(tmp_path)
    monkeypatch.setenv("STAND_IN_FAIL", "no kernel for op X")
    with pytest.raises(RuntimeError, match="stand-in engine: no kernel for op X"):
        engines.DeepSparseWorker(stand_in_deepsparse, path, [[np.zeros((1, 6), dtype=np.int64)]], 1, tmp_path)


def test_deepsparse_python_flag_is_checked(tmp_path):
    with pytest.raises(CompressorError, match="not an executable file"):
        engines.deepsparse_interpreter(str(tmp_path / "missing-python"))
    if importlib.util.find_spec("deepsparse") is None:
        with pytest.raises(CompressorError, match="cannot import deepsparse"):
            engines.deepsparse_interpreter(sys.executable)
        python, line = engines.deepsparse_interpreter(None)
        assert python is None and "--deepsparse-python" in line


def _bench_mlp_onnx(load_fixture, tmp_path, more_passes: list[dict], flags: list[str]):
    """``compress bench model --sections onnx`` on the fixture MLP at 75% balanced 4x4 blocks (plus
    ``more_passes``) with ``flags``; returns the JSON's path."""
    from compressor.bench import model as bench_model
    from compressor.recipe import parse_recipe
    from fixture_models import trusted_ref

    recipe = parse_recipe({"version": 1, "passes": [
        {"pass": "block_prune", "block": [4, 4], "sparsity": 0.75, "balanced": True}, *more_passes]})
    art = tmp_path / "art"
    compressor.Pipeline(recipe).run(load_fixture("mlp"), out=art, console=Console(file=io.StringIO()))
    parser = argparse.ArgumentParser()
    bench_model.add_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args([str(art), "--sections", "onnx", "--repeats", "2", "--warmup", "1", "--threads", "1",
                              "--json", str(out), "--model", trusted_ref(art), *flags])
    assert bench_model.run(args) == 0
    return out


def test_bench_model_deepsparse_row_through_the_flag(load_fixture, tmp_path, stand_in_deepsparse, capsys):
    """``compress bench model --deepsparse-python``: a third model.onnx row, checked against ORT, with
    the compressed row's speed-up over it (stand-in engine: DeepSparse's figures are BENCHMARKS.md's)."""
    from compressor.bench import model as bench_model

    out = _bench_mlp_onnx(load_fixture, tmp_path, [{"pass": "swap_kernels", "force": True, "repeats": 1}],
                          ["--copies", "2", "--deepsparse-python", stand_in_deepsparse])
    rows = [r for r in json.loads(out.read_text())["rows"] if r["case"] == "model.onnx"]
    assert [r["impl"] for r in rows] == ["dense", bench_model.DEEPSPARSE, "compressed"]
    assert rows[1]["max_rel_error"] <= bench_model.DEEPSPARSE_TOLERANCE and "stand-in Engine" in rows[1]["engine"]
    assert rows[2]["speedup_vs_deepsparse"] == pytest.approx(rows[1]["median_us"] / rows[2]["median_us"])
    assert "x DeepSparse" in capsys.readouterr().out


def test_bench_model_real_deepsparse_row(load_fixture, tmp_path):
    """DeepSparse itself, where it is installed in this environment (it is not in the test extra)."""
    pytest.importorskip("deepsparse", reason="deepsparse not installed here (separate venv; README)")
    from compressor.bench import model as bench_model

    out = _bench_mlp_onnx(load_fixture, tmp_path, [], ["--copies", "1"])
    assert bench_model.DEEPSPARSE in {r["impl"] for r in json.loads(out.read_text())["rows"]}
