"""`compress report A --compare B`: in the terminal, as JSON and in the HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.report import Report, compare_reports, render_comparison



def load(directory):
    return json.loads((Path(directory) / "report.json").read_text())


def test_compare_from_the_command_line(artifact_a, artifact_b, capsys, monkeypatch):
    """``compress report A --compare B`` (in process: the installed entry point has its own test in
    test_packaging.py)."""
    from compressor.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    assert main(["report", str(artifact_a), "--compare", str(artifact_b)]) == 0
    stdout = capsys.readouterr().out
    a, b = load(artifact_a), load(artifact_b)
    lines = {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.count("│") > 5}
    for ra, rb in zip(a["layers"], b["layers"]):
        line = lines[ra["name"]]
        assert ra["pattern"] in line and rb["pattern"] in line
        assert f"{100 * ra['sparsity']:.1f}%" in line and f"{100 * rb['sparsity']:.1f}%" in line
        assert f"{rb['compressed_bytes'] / ra['compressed_bytes']:.2f}x" in line
        assert f"{rb['compressed_flops'] / ra['compressed_flops']:.2f}x" in line
    # B (70% unstructured: a bitmask, 1 bit per entry, + 30% of the values) stores fewer bytes than
    # A (50% in 4x4 blocks: half the values + one block index per kept block)
    total = b["totals"]["compressed_bytes"] / a["totals"]["compressed_bytes"]
    assert f"{total:.2f}x" in lines["total"] and total < 1
    assert "A before" in stdout and "output_rel_error" in stdout


def test_compare_json(artifact_a, artifact_b, capsys):
    assert main(["report", str(artifact_a), "--compare", str(artifact_b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b = load(artifact_a), load(artifact_b)
    assert [row["name"] for row in out["layers"]] == [r["name"] for r in a["layers"]]
    for row, ra, rb in zip(out["layers"], a["layers"], b["layers"]):
        assert row["a"]["pattern"] == ra["pattern"] and row["b"]["sparsity"] == rb["sparsity"]
        assert row["bytes_ratio"] == pytest.approx(rb["compressed_bytes"] / ra["compressed_bytes"])
        assert row["flops_ratio"] == pytest.approx(rb["compressed_flops"] / ra["compressed_flops"])
    assert out["metrics"]["output_rel_error"]["b"]["after"] == b["metrics"]["output_rel_error"]["after"]
    assert out["a"] == a and out["b"] == b


def test_compare_html_shows_both_masks_and_numbers(artifact_a, artifact_b, tmp_path, parse_page, capsys):
    out = tmp_path / "compare.html"
    assert main(["report", str(artifact_a), "--compare", str(artifact_b), "--html", str(out)]) == 0
    page = parse_page(out.read_text(encoding="utf-8"))
    a, b = load(artifact_a), load(artifact_b)
    assert page.urls == [] and "script" not in page.tags
    names = [img["data-layer"] for img in page.images]
    assert names == [n for r in a["layers"] for n in (r["name"], r["name"])]      # A next to B, per layer
    assert [img["alt"].split(" in ")[1][0] for img in page.images] == ["A", "B"] * len(a["layers"])
    rows = {r["layer"]: r["cells"] for r in page.tables["compare"] if r["layer"] is not None}
    for ra, rb in zip(a["layers"], b["layers"]):
        cells = rows[ra["name"]]
        assert cells["a.pattern"][0] == ra["pattern"] and cells["b.pattern"][0] == rb["pattern"]
        assert cells["a.compressed_bytes"][0] == ra["compressed_bytes"]
        assert cells["b.compressed_flops"][0] == rb["compressed_flops"]
        assert cells["bytes_ratio"][0] == pytest.approx(rb["compressed_bytes"] / ra["compressed_bytes"])
    assert rows["total"]["b.sparsity"][0] == b["totals"]["sparsity"]


def test_layers_in_only_one_report(artifact_a, artifact_b, capsys):
    a, b = load(artifact_a), load(artifact_b)
    a["layers"] = a["layers"][1:]                    # A lacks the first layer
    b["layers"] = b["layers"][:-1]                   # B lacks the last
    comparison = compare_reports(Report.from_dict(a), Report.from_dict(b))
    first, last = comparison.layers[-1], comparison.layers[-2]
    assert first.a is None and first.bytes_ratio is None and last.b is None
    from rich.console import Console

    console = Console(width=250, record=True)
    render_comparison(comparison, console)
    assert "decoder.weight" in console.export_text()


def test_compare_with_a_missing_directory_fails_cleanly(artifact_a, tmp_path, capsys):
    assert main(["report", str(artifact_a), "--compare", str(tmp_path / "nope")]) == 2
    assert "report.json is missing" in capsys.readouterr().err
