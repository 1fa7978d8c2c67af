"""Smoke test of ``compress bench kernels`` on tiny sizes (benchmarks are not tests: no timing asserted)."""

from __future__ import annotations

import argparse
import json

import pytest

from compressor.bench import kernels as bench

pytestmark = pytest.mark.filterwarnings("ignore")


def test_bench_kernels_tiny(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args([
        "--shape", "96x80", "--block", "16", "--sparsities", "0.5", "--batches", "1,3", "--rnn-hidden", "32", "--rnn-input", "24",
        "--rnn-layers", "2", "--gated-shape", "64x48", "--gated-block", "16", "--keeps", "0.5", "--repeats", "2",
        "--warmup", "1", "--copies", "1", "--sections", "linear,onnx,rnn,gated,gated-rnn", "--onnx-layers", "1",
        "--json", str(out),
    ])
    assert bench.run(args) == 0
    payload = json.loads(out.read_text())
    sections = {r["section"] for r in payload["rows"]}
    assert sections == {"linear", "onnx", "rnn", "gated", "gated-rnn"}
    impls = {r["impl"] for r in payload["rows"] if r["section"] == "gated-rnn"}
    assert {"dense step (SparseLSTM, nn.Linear)", "ours GatedLSTM.step (row top-k, with gates)"} <= impls
    assert all(r["median_us"] > 0 for r in payload["rows"])
    assert "kernels: linear" in capsys.readouterr().out


def test_bench_rejects_unknown_section(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--sections", "linear,gpu", "--json", str(tmp_path / "x.json")])) == 2


def test_bench_onnx_on_the_shared_ort_pool(tmp_path):
    """``--ort-pool shared`` sets ORT's global pool, which must precede every session: a fresh process."""
    import subprocess
    import sys

    out = tmp_path / "k.json"
    proc = subprocess.run([sys.executable, "-m", "compressor.bench.kernels", "--sections", "onnx", "--shape", "96x80",
                           "--block", "16", "--sparsities", "0.5", "--repeats", "2", "--warmup", "1", "--copies", "1",
                           "--threads", "2", "--ort-pool", "shared", "--onnx-layers", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert {r["impl"] for r in payload["rows"]} == {"ORT dense", "ORT ours"}
    assert payload["args"]["ort_pool"] == "shared"


def test_bench_onnx_stacked_models_time_per_layer(tmp_path):
    """``--onnx-layers 1,3``: one-layer models and a 3-layer stack (2 models to rotate 4 weight
    sets), each ORT output checked against torch before timing; the stacked rows are per layer."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args(["--sections", "onnx", "--shape", "48x48", "--block", "16", "--sparsities", "0.5",
                              "--onnx-layers", "1,3", "--repeats", "2", "--warmup", "1", "--copies", "4",
                              "--threads", "1", "--json", str(out)])
    assert bench.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["layers"], r["impl"]) for r in rows) == [(1, "ORT dense"), (1, "ORT ours"), (3, "ORT dense"),
                                                              (3, "ORT ours")]
    assert all(("3-layer model, per layer" in r["case"]) == (r["layers"] == 3) for r in rows)


def test_bench_onnx_stack_needs_a_square_shape(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--sections", "onnx", "--shape", "48x32", "--json", str(tmp_path / "k.json")])
    assert bench.run(args) == 2
    err = capsys.readouterr().err
    assert "--onnx-layers 1,8" in err and "48x32" in err
    assert not (tmp_path / "k.json").exists()


def test_bench_onnx_refuses_a_graph_that_differs_from_torch(tmp_path):
    """The check before timing compares ORT with the module it is given: a graph of other weights fails."""
    import torch

    from compressor.kernels import export_onnx, ort_session

    torch.manual_seed(0)
    exported, other = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    path = export_onnx(exported, (torch.randn(1, 8),), tmp_path / "m.onnx")
    x = torch.randn(1, 8)
    assert bench._verified_session(ort_session, path, exported, x) is not None
    with pytest.raises(RuntimeError, match="differs from torch"):
        bench._verified_session(ort_session, path, other, x)


def test_bench_linear_rows_per_block_size_beside_scipy(tmp_path, capsys):
    """``--block 8,16``: the linear section once per block size, each with the scipy BSR row (and
    MKL's where sparse_dot_mkl runs, else one line saying why); ratios are over scipy's median."""
    from compressor.bench.engines import mkl_unavailable_reason

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args(["--sections", "linear", "--shape", "64x48", "--block", "8,16", "--sparsities", "0.5",
                              "--batches", "2", "--repeats", "2", "--warmup", "1", "--copies", "2", "--threads", "1",
                              "--json", str(out)])
    assert bench.run(args) == 0
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    mkl = mkl_unavailable_reason() is None
    expected = {"dense F.linear", "torch BSR", "ours BlockSparseLinear", "ours, BSR layout", bench.SCIPY} | (
        {bench.MKL} if mkl else set())
    for block in (8, 16):
        assert {r["impl"] for r in rows if r["block"] == block} == expected
    scipy = {r["block"]: r for r in rows if r["impl"] == bench.SCIPY}
    for r in rows:
        assert r["speedup_vs_scipy_bsr"] == pytest.approx(scipy[r["block"]]["median_us"] / r["median_us"])
    printed = capsys.readouterr().out
    assert ("MKL BSR (sparse_dot_mkl) row not run" in printed) == (not mkl)
    assert (payload["machine"]["mkl_row"] == "ran") if mkl else payload["machine"]["mkl_row"].startswith("not run: ")


def test_bench_rejects_a_non_positive_block(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--sections", "linear", "--block", "16,0", "--json", str(tmp_path / "k.json")])) == 2
    assert "--block" in capsys.readouterr().err
