"""Smoke test of ``compress bench oneshot`` (the figures themselves are not asserted, only what must
hold whatever the machine: every method runs its own pass at the pattern asked for)."""

from __future__ import annotations

import json

from compressor.bench import oneshot as bench
from compressor.recipe import parse_recipe

from bench_tools import bench_args  # tests/bench_tools.py


def test_every_method_and_pattern_is_a_valid_recipe_step():
    for pattern in ("50%", "2:4", "T4:8"):
        for method in bench.METHODS:
            step = bench._step(method, pattern, {"targets": ["rnn"]}, 256)
            if (method == "nm_convert" and pattern == "50%") or (method == "wanda" and pattern == "T4:8"):
                assert step is None  # nm_convert only makes N:M; wanda has no transposable N:M
                continue
            config = parse_recipe({"version": 1, "passes": [step]}).passes[0].config
            if pattern == "T4:8":
                assert (config.n, config.m, config.transposable) == (4, 8, True)
            for allocation in ("owl", "sensitivity"):  # only wanda and sparsegpt at unstructured patterns take one
                step = bench._step(method, pattern, {"targets": ["rnn"]}, 256, allocation, "curves.json")
                assert (step is None) == (pattern != "50%" or method not in ("wanda", "sparsegpt"))
                if step is not None and allocation == "owl":
                    assert parse_recipe({"version": 1, "passes": [step]}).passes[0].config.allocation == "owl"


def test_bench_oneshot_small(tmp_path, capsys):
    out = tmp_path / "oneshot.json"
    args = bench_args(bench, "--patterns", "2:4", "--methods", "magnitude,sparsegpt", "--targets", "rnn.weight_hh_l1",
                      "--rows", "512", "--eval-tokens", "2048", "--json", out)
    assert bench.run(args) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["method"], r["pass"]) for r in results] == [("magnitude", "nm_prune"), ("sparsegpt", "sparsegpt")]
    for r in results:
        assert r["layers"] == ["rnn.weight_hh_l1"] and r["sparsity"] == 0.5
        assert r["perplexity"] > 1.0
    assert "one-shot pruning of lstm-lm" in capsys.readouterr().out


def test_bench_oneshot_on_the_char_encoder_calibrates_on_masked_text(tmp_path, capsys):
    out = tmp_path / "oneshot.json"
    args = bench_args(bench, "--model", "char-encoder", "--patterns", "T4:8", "--methods", "sparsegpt",
                      "--targets", "body.blocks.1.fc2", "--rows", "256", "--eval-tokens", "2048", "--json", out)
    assert bench.run(args) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert (r["model"], r["metric"], r["layers"], r["sparsity"]) == ("char-encoder", "masked_perplexity",
                                                                     ["body.blocks.1.fc2.weight"], 0.5)
    assert r["masked_perplexity"] > 1.0 and r["dense"] > 1.0
    assert "one-shot pruning of char-encoder" in capsys.readouterr().out
