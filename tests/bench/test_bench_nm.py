"""Smoke test of ``compress bench nm`` on the built-in LM (benchmarks are not tests: the figures
themselves are not asserted, only what must hold whatever the machine)."""

from __future__ import annotations

import json

from compressor.bench import nm as bench

from bench_tools import bench_args  # tests/bench_tools.py


def test_bench_nm_lstm_small(tmp_path, capsys):
    out = tmp_path / "nm.json"
    # one score (the activation score's masks are tests/passes/test_nm_convert.py's): both kinds, both reconstructions
    args = bench_args(bench, "--models", "lstm-lm", "--patterns", "2:4", "--scores", "magnitude", "--rows", 512,
                      "--eval-tokens", 4096, "--json", out)
    assert bench.run(args) == 0
    results = json.loads(out.read_text())["results"]
    assert {(r["transposable"], r["score"], r["reconstruct"]) for r in results} == {
        (t, "magnitude", r) for t in (False, True) for r in ("none", "lstsq")
    }
    for r in results:
        # least squares on the calibration rows can only lower their error against the same mask
        if r["reconstruct"] == "lstsq" and r["score"] == "magnitude":
            assert r["layer_error_after"] < r["layer_error_before"]
        assert r["value"] > 1.0  # a perplexity
        if not r["transposable"] and r["score"] == "magnitude":
            assert r["kept_magnitude_vs_plain"] == 1.0
    assert "N:M conversion" in capsys.readouterr().out


def test_bench_nm_char_encoder_small(tmp_path):
    out = tmp_path / "nm.json"
    # plain 2:4 only: the transposable kind (the same pass and solver) is the lstm run's
    args = bench_args(bench, "--models", "char-encoder", "--patterns", "2:4", "--scores", "magnitude",
                      "--kinds", "plain", "--rows", 256, "--eval-tokens", 4096, "--json", out)
    assert bench.run(args) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results) == 2 and {r["metric"] for r in results} == {"masked test ppl"}
    assert not any(r["transposable"] for r in results)
    for r in results:
        assert r["dense"] > 1.0 and r["value"] > 1.0
        if r["reconstruct"] == "lstsq":
            assert r["layer_error_after"] < r["layer_error_before"]


def test_bench_nm_refuses_an_unknown_kind(tmp_path, capsys):
    from compressor.cli import main

    out = tmp_path / "nm.json"
    assert main(["bench", "nm", "--kinds", "plain,sparse", "--json", str(out)]) == 2
    assert "--kinds plain,sparse" in capsys.readouterr().err
    assert not out.exists()
