"""Smoke test of ``compress bench hf`` on a tiny BERT directory with its own tokenizer (the benchmark's
default model is the pretrained MiniLM; the figures themselves are not asserted)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from compressor.bench import hf as bench  # noqa: E402
from bench_tools import bench_args  # noqa: E402  (tests/bench_tools.py)
from hf_tools import tiny_bert_with_tokenizer as _tiny_bert_with_tokenizer  # noqa: E402


def test_bench_hf_small(tmp_path, capsys):
    directory = _tiny_bert_with_tokenizer(tmp_path / "bert")
    out = tmp_path / "hf.json"
    args = bench_args(bench, "--model-dir", directory, "--patterns", "2:4,T4:8", "--methods", "wanda,sparsegpt",
                      "--sequences", 8, "--seq-len", 16, "--eval-sentences", 8, "--calibration-corpus", "pydoc",
                      "--eval-corpus", "pydoc", "--json", out)
    assert bench.run(args) == 0
    report = json.loads(out.read_text())
    assert report["held_out_sentences"] == 8
    results = {(r["pattern"], r["method"]): r for r in report["results"]}
    # wanda has no transposable N:M: that cell is absent
    assert set(results) == {("2:4", "wanda"), ("2:4", "sparsegpt"), ("T4:8", "sparsegpt")}
    assert results[("T4:8", "sparsegpt")]["step"]["rows"] == 8 * 16
    assert results[("T4:8", "sparsegpt")]["step"]["transposable"] is True
    for r in results.values():
        assert r["layers"] == 12  # 2 layers x 6 linear layers, the pooler left dense
        assert r["sparsity"] == 0.5
        assert -1.0 <= r["embedding_cosine_min"] <= r["embedding_cosine_mean"] <= 1.0
    assert any("block by block" in n for n in results[("2:4", "sparsegpt")]["notes"])
    assert "embedding cosine to dense" in capsys.readouterr().out


def test_bench_hf_on_a_decoder_reports_held_out_perplexity(tmp_path, capsys):
    """A GPT-2-style directory: the causal LM objective's perplexity, the dense figure beside it, the tied
    LM head left dense."""
    from hf_tools import tiny_hf_with_tokenizer

    directory = tiny_hf_with_tokenizer(tmp_path / "gpt2", "GPT2LMHeadModel")
    out = tmp_path / "hf.json"
    args = bench_args(bench, "--model-dir", directory, "--patterns", "2:4", "--methods", "magnitude,sparsegpt",
                      "--sequences", 8, "--seq-len", 16, "--calibration-corpus", "pydoc", "--eval-corpus", "pydoc",
                      "--json", out)
    assert bench.run(args) == 0
    report = json.loads(out.read_text())
    assert report["objective"] == "causal_lm" and report["dense"]["perplexity"] > 1.0
    results = {r["method"]: r for r in report["results"]}
    assert set(results) == {"magnitude", "sparsegpt"}
    for r in results.values():
        assert r["step"]["ignore"] == ["lm_head"] and r["layers"] == 8  # 2 blocks x 4 Conv1D layers
        assert r["perplexity"] > 1.0 and "embedding_cosine_mean" not in r
    assert "gpt2, perplexity on pydoc" in capsys.readouterr().out
