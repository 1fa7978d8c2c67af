"""The terminal table says what the saved model is: whole layer names, measured speed-ups, and why
a recurrent layer has no step graph."""

from __future__ import annotations

import io

from rich.console import Console

import compressor
from compressor.recipe import parse_recipe
from compressor.report import render_report

QUIET = Console(file=io.StringIO())


def _render(report, width=80) -> str:
    out = io.StringIO()
    render_report(report, Console(file=out, width=width))  # a pipe: not a terminal
    return out.getvalue()


def test_long_names_are_folded_not_cut_and_installed_kernels_show_their_speedup(load_fixture):
    spec = load_fixture("mlp")
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "targets": ["fc1"]},
                                                    {"pass": "swap_kernels", "force": True, "repeats": 2}]})
    report = compressor.Pipeline(recipe).run(spec, console=QUIET).report
    row = report.layers[0]
    assert row.kernel == "nm_linear" and row.speedup is not None
    row.name = "encoder.layer.11.attention.output.dense.weight.of.a.rather.deep.model.whose.names.run.past.eighty.columns"
    narrow = _render(report, width=80).replace("│", "").replace("┃", "")
    joined = "".join(line.strip() for line in narrow.splitlines())
    assert row.name.replace(".", "") in joined.replace(".", "").replace(" ", "")  # folded over lines, not cut
    wide = _render(report, width=220)
    assert f"nm_linear ({row.speedup:.2f}x)" in wide  # installed: the measured speed-up beside the kernel
    assert "integer inputs are random token ids" in wide


def test_a_bidirectional_layer_says_why_it_has_no_step_graph(load_fixture, tmp_path):
    spec = load_fixture("bilstm")
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "targets": ["rnn"]}],
                           "export": {"onnx": True}})
    report = compressor.Pipeline(recipe).run(spec, out=tmp_path / "art", console=QUIET).report
    rows = {r.name: r for r in report.layers}
    assert any("no step graph: a bidirectional layer" in n for n in rows["rnn.weight_hh_l0_reverse"].notes)
    assert not list((tmp_path / "art").glob("*.step.onnx"))
    saved = compressor.read_report(tmp_path / "art")  # report.json carries the note too
    assert any("no step graph" in n for r in saved.layers for n in r.notes)
