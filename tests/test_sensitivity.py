"""compress sensitivity: a point of the curves against the metric recomputed by hand (the built-in LM,
a Wanda mask built here, perplexity on the validation split), resume counted in evaluations, the recipe
it writes loading and meeting its budget on the saved masks, the chart, and one-line errors."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from compressor.cli import main
from compressor.errors import CompressorError
from compressor.loading import ModelSpec
from compressor.recipe import load_recipe, parse_recipe
from compressor.sensitivity import CHART_FILE, RECIPE_FILE, SENSITIVITY_FILE, read_curves, render_table, sweep

QUIET = Console(file=io.StringIO())


def test_a_point_equals_the_metric_recomputed_by_hand_on_the_builtin_lm(tmp_path):
    from compressor.corpus import pydoc_text, split_text
    from compressor.models.lstm_lm import perplexity
    from compressor.tasks import TaskConfig, build_task

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - pass: wanda\n    targets: [rnn.weight_ih_l0]\n    rows: 256\n"
                      "    sparsity: 0.2\n    calibration: {name: lm, batch_size: 16}\n")
    out = tmp_path / "curves"
    code = main(["sensitivity", "--recipe", str(recipe), "--out", str(out), "--sparsities", "0.5",
                 "--eval-tokens", "256"])
    assert code == 0
    curves = read_curves(out / SENSITIVITY_FILE)
    (point,) = curves["layers"]["rnn.weight_ih_l0"]["points"]

    spec = compressor.load_model("lstm-lm")
    model = spec.model.eval()
    valid = spec.vocab.encode(split_text(pydoc_text()).valid)[:257]
    assert curves["metric"] == "perplexity" and curves["split"] == "valid"
    assert curves["dense"] == pytest.approx(perplexity(model, valid), rel=1e-6)
    # Wanda by hand: the layer's inputs are the embedded calibration tokens, the first 256 positions
    task = build_task(TaskConfig(name="lm", batch_size=16), spec, None)
    tokens = task.inputs(task.batch(1_000_000))[0]
    x = model.embedding(tokens).reshape(-1, 64)[:256].detach()
    w = model.rnn.weight_ih_l0.detach()
    score = w.abs() * x.norm(dim=0)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(1, score.argsort(1, descending=True)[:, :32], True)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.rnn.weight_ih_l0.mul_(keep)
    assert point["measured_sparsity"] == 0.5
    assert point["value"] == pytest.approx(perplexity(pruned, valid), rel=1e-6)
    # the table prints it
    text = io.StringIO()
    render_table(_result(curves), Console(file=text, width=200))
    assert f"{point['value']:.5g}" in text.getvalue() and "rnn.weight_ih_l0" in text.getvalue()
    # one layer, a budget of 0.2 (the pass's sparsity): all of it on that layer
    assert curves["allocation"]["layers"] == {"rnn.weight_ih_l0": pytest.approx(round(0.2 * 65536) / 65536)}


def _result(curves):
    from compressor.sensitivity import SweepResult

    return SweepResult(curves, 0, 0, curves["allocation"], [])


class Stop(Exception):
    pass


def _spec(calls, fail_after=None):
    """An MLP with a counting held-out metric (the output error against the dense model on fixed inputs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)

    def evaluate(m, max_tokens=None):
        calls.append(1)
        if fail_after is not None and len(calls) > fail_after:
            raise Stop
        with torch.no_grad():
            return {"err": float((m(x) - ref).norm() / ref.norm())}

    return ModelSpec(model, (torch.randn(2, 16),), {"kind": "factory", "ref": "tests:mlp"}, evaluate=evaluate)


STEP = {"pass": "sparsegpt", "sparsity": 0.5, "rows": 64, "calibration": {"name": "distill", "batch_size": 64}}


def test_resume_skips_the_points_already_measured(tmp_path):
    step = {**STEP, "targets": ["0", "2"]}  # two layers
    recipe = parse_recipe({"version": 1, "passes": [step]})
    out = tmp_path / "s"
    calls = []
    with pytest.raises(Stop):  # killed after the dense model and two points
        sweep(recipe, _spec(calls, fail_after=3), out, [0.3, 0.6], console=QUIET)
    done = read_curves(out / SENSITIVITY_FILE)
    assert sum(len(layer["points"]) for layer in done["layers"].values()) == 2
    calls = []
    result = sweep(recipe, _spec(calls), out, [0.3, 0.6], console=QUIET)
    assert (result.evaluated, result.reused, len(calls)) == (2, 2, 2)  # no dense evaluation either
    calls = []
    result = sweep(recipe, _spec(calls), out, [0.3, 0.6], console=QUIET)
    assert (result.evaluated, len(calls)) == (0, 0)
    calls = []
    result = sweep(recipe, _spec(calls), out, [0.3, 0.6, 0.8], console=QUIET)
    assert (result.evaluated, result.reused, len(calls)) == (2, 4, 2)
    # the resumed points equal a fresh run's
    fresh = sweep(recipe, _spec([]), tmp_path / "fresh", [0.3, 0.6, 0.8], console=QUIET)
    for name, layer in fresh.curves["layers"].items():
        assert [p["value"] for p in layer["points"]] == \
            pytest.approx([p["value"] for p in result.curves["layers"][name]["points"]], rel=1e-9)
    # other settings of the pass: refused, unless --force starts over
    other = parse_recipe({"version": 1, "passes": [{**step, "rows": 32}]})
    with pytest.raises(CompressorError, match="another pass, model or evaluation.*--force"):
        sweep(other, _spec([]), out, [0.3], console=QUIET)
    calls = []
    result = sweep(other, _spec(calls), out, [0.3], budget=0.25, force=True, console=QUIET)
    assert (result.evaluated, len(calls)) == (2, 3)
    # the budget (the pass's sparsity) is not a setting of the points: changing it measures nothing again
    cheaper = parse_recipe({"version": 1, "passes": [{**step, "rows": 32, "sparsity": 0.2}]})
    assert sweep(cheaper, _spec([]), out, [0.3], console=QUIET).evaluated == 0


def test_the_recipe_it_writes_loads_and_meets_its_budget(tmp_path):
    recipe = parse_recipe({"version": 1, "passes": [STEP]})
    out = tmp_path / "s"
    result = sweep(recipe, _spec([]), out, [0.3, 0.6, 0.9], budget=0.55, console=QUIET)
    written = load_recipe(out / RECIPE_FILE)
    config = written.passes[0].config
    assert (config.allocation, config.sparsity, config.sensitivity) == ("sensitivity", 0.55, str(out / SENSITIVITY_FILE))
    run = compressor.Pipeline(written).run(_spec([]), console=QUIET)
    sizes = {"0.weight": 640, "2.weight": 960, "4.weight": 192}
    pruned = {n: int((~m).sum()) for n, m in run.masks.items()}
    assert sum(pruned.values()) == round(0.55 * sum(sizes.values()))
    for name, n in sizes.items():
        assert pruned[name] / n == pytest.approx(result.allocation["layers"][name], abs=1e-12)
    rows = {r.name: r for r in run.report.layers}
    assert rows["4.weight"].target_sparsity == pytest.approx(pruned["4.weight"] / 192, abs=1e-6)
    # a budget beyond the measured sparsities is one line
    with pytest.raises(CompressorError, match="measure higher sparsities"):
        sweep(recipe, _spec([]), out, [0.3], budget=0.95, console=QUIET)


def test_the_chart_has_a_curve_per_layer(tmp_path):
    recipe = parse_recipe({"version": 1, "passes": [STEP]})
    sweep(recipe, _spec([]), tmp_path / "s", [0.4, 0.8], console=QUIET)
    page = (tmp_path / "s" / CHART_FILE).read_text()
    assert page.count("<polyline") == 3 and page.count('<tr data-layer="') == 3
    curves = json.loads((tmp_path / "s" / SENSITIVITY_FILE).read_text())
    value = curves["layers"]["2.weight"]["points"][1]["value"]
    assert f'data-key="value@0.8" data-value="{value}"' in page


@pytest.mark.parametrize("body, needle", [
    ("passes:\n  - pass: sparsegpt\n    pattern: nm\n", "has pattern: nm; the sweep varies the sparsity"),
    ("passes:\n  - pass: nm_prune\n", "has no sparsegpt or wanda pass"),
])
def test_bad_sweeps_are_one_line(tmp_path, capsys, body, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\n" + body)
    assert main(["sensitivity", "--recipe", str(recipe), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_not_a_sweep_is_refused(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - pass: wanda\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["sensitivity", "--recipe", str(recipe), "--out", str(out), "--sparsities", "0.5,abc"]) == 2
    assert "--sparsities" in capsys.readouterr().err
    with pytest.raises(CompressorError, match="holds no sensitivity.json"):
        sweep(parse_recipe({"version": 1, "passes": [STEP]}), _spec([]), out, [0.5], console=QUIET)
    assert (out / "keep.txt").exists()
    assert Path(out).is_dir()


def test_an_encoder_calibrated_on_text_is_measured_by_embedding_cosine(tmp_path):
    """No held-out metric of its own: the text task's embedding cosine to the dense model, as the
    Hugging Face benchmark measures it; the point equals the task's cosine of the pass's own result."""
    pytest.importorskip("transformers")
    from hf_tools import tiny_bert_with_tokenizer as _tiny_bert_with_tokenizer

    from compressor.tasks import TaskConfig
    from compressor.text_task import TextTask

    directory = str(_tiny_bert_with_tokenizer(tmp_path / "bert"))
    corpus = tmp_path / "corpus.txt"  # a short text keeps tokenizing cheap
    corpus.write_text("".join(f"the quick brown fox {i} jumps over the lazy dog near river {i % 7}.\n\n"
                              for i in range(300)))
    text = {"name": "text", "corpus": str(corpus), "seq_len": 16, "batch_size": 4, "eval_sentences": 8}
    step = {"pass": "wanda", "targets": ["encoder.layer.0.intermediate.dense"], "rows": 32, "calibration": text}
    result = sweep(parse_recipe({"version": 1, "passes": [step]}), compressor.load_model(directory), tmp_path / "s",
                   [0.5], console=QUIET)
    curves = result.curves
    assert (curves["metric"], curves["higher_is_better"]) == ("embedding_cosine_mean", True)
    assert curves["dense"] == pytest.approx(1.0, abs=1e-6)
    pruned = compressor.Pipeline(parse_recipe({"version": 1, "passes": [{**step, "sparsity": 0.5}]})).run(
        compressor.load_model(directory), console=QUIET)
    dense = compressor.load_model(directory)
    want = TextTask(TaskConfig(**text), dense, dense.model).evaluate(pruned.model)["embedding_cosine_mean"]
    (point,) = curves["layers"]["encoder.layer.0.intermediate.dense.weight"]["points"]
    assert point["value"] == pytest.approx(want, rel=1e-6) and point["value"] < 1.0 - 1e-6
