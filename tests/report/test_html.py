"""The HTML report: self-contained, one picture per layer, and the numbers of report.json."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

import compressor
from compressor.cli import main
from compressor.report import LayerRow, Report
from compressor.report_html import artifact_html, render_html

NUMERIC = ("target_sparsity", "sparsity", "nonzero", "params", "dense_bytes", "compressed_bytes",
           "dense_flops", "compressed_flops")


def test_html_from_the_command_line_matches_report_json(artifact_a, tmp_path, parse_page, png_of, capsys):
    """``compress report DIR --html`` (in process: the installed entry point has its own test in
    test_packaging.py)."""
    from compressor.cli import main

    out = tmp_path / "report.html"
    assert main(["report", str(artifact_a), "--html", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"html report: {out}" in stdout and "total" in stdout   # the table is still printed
    report = json.loads((artifact_a / "report.json").read_text())
    page = parse_page(out.read_text(encoding="utf-8"))

    # self-contained: no scripts, no stylesheets or anything else fetched from elsewhere
    assert page.urls == [] and "script" not in page.tags and "link" not in page.tags

    # exactly one picture per layer, in report order, each a valid PNG of the size it claims
    masks = [img for img in page.images if img.get("class") == "mask"]
    assert len(masks) == len(page.images) == len(report["layers"])
    assert [img["data-layer"] for img in masks] == [r["name"] for r in report["layers"]]
    for img in masks:
        pixels = png_of(img["src"])
        assert pixels.ndim == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0

    # every number in the table is report.json's, and the text shown agrees with it
    rows = {r["layer"]: r["cells"] for r in page.tables["layers"] if r["layer"] is not None}
    assert set(rows) == {r["name"] for r in report["layers"]} | {"total"}
    for layer in report["layers"]:
        cells = rows[layer["name"]]
        for key in NUMERIC:
            assert cells[key][0] == layer[key], (layer["name"], key)
        assert cells["pattern"] == (layer["pattern"], layer["pattern"])
        assert float(cells["sparsity"][1].rstrip("%")) == pytest.approx(100 * layer["sparsity"], abs=0.05)
        assert cells["shape"][1] == "x".join(map(str, layer["shape"]))
    for key in ("sparsity", "nonzero", "params", "dense_bytes", "compressed_bytes", "dense_flops", "compressed_flops"):
        assert rows["total"][key][0] == report["totals"][key]
    metrics = {r["layer"]: r["cells"] for r in page.tables["metrics"] if r["layer"] is not None}
    assert metrics.keys() == report["metrics"].keys()
    for name, values in report["metrics"].items():
        assert metrics[name]["after"][0] == values["after"]


def test_mask_pictures_are_the_masks_of_the_artifact(artifact_a, parse_page, png_of):
    """The 4x4 block picture of each LSTM weight is its saved mask, block by block."""
    page = parse_page(artifact_html(artifact_a))
    masks = compressor.load_masks(artifact_a)
    images = {img["data-layer"]: img for img in page.images}
    name = "rnn.weight_hh_l0"
    blocks = masks[name].numpy().reshape(masks[name].shape[0] // 4, 4, -1, 4).any(axis=(1, 3))   # (R, C)
    pixels = png_of(images[name]["src"])
    px = pixels.shape[0] // blocks.shape[0]
    dark = pixels[::px, ::px].sum(axis=2) < 400          # kept cells are dark blue, pruned ones near white
    assert np.array_equal(dark, blocks)


def test_gated_layer_from_a_hand_built_artifact_is_a_heat_map(artifact_a, tmp_path, parse_page, png_of):
    """A layer carrying block_keep_frequency (future gated layers) is drawn from it, not from a mask."""
    art = tmp_path / "gated"
    shutil.copytree(artifact_a, art)
    data = json.loads((art / "report.json").read_text())
    layer = data["layers"][0]                                   # rnn.weight_ih_l0, 80 x 12
    rows, cols = -(-layer["shape"][0] // 4), -(-layer["shape"][1] // 4)
    freq = (np.arange(rows * cols).reshape(rows, cols) % 5 / 4).tolist()   # 0, .25, .5, .75, 1, ...
    layer.update(pattern="gated 4x4", pattern_spec={"kind": "gated", "h": 4, "w": 4, "keep": 0.5},
                 block_keep_frequency=freq)
    (art / "report.json").write_text(json.dumps(data))

    report = compressor.read_report(art)
    assert report.layers[0].block_keep_frequency == freq            # survives report.json
    page = parse_page(artifact_html(art))
    assert len(page.images) == len(data["layers"])
    pixels = png_of(page.images[0]["src"])
    px = pixels.shape[0] // rows
    corner = pixels[::px, ::px]
    assert corner.shape[:2] == (rows, cols)
    f = np.array(freq)
    assert (corner[f == 0] == (255, 247, 214)).all() and (corner[f == 1] == (127, 16, 22)).all()  # never / always
    assert (corner[f == 0.5] == (239, 138, 48)).all()
    assert "kept the block" in artifact_html(art)


def test_report_json_old_and_new_fields(artifact_a):
    data = json.loads((artifact_a / "report.json").read_text())
    for layer in data["layers"]:
        layer.pop("block_keep_frequency", None)      # written before the field existed
        layer["from_the_future"] = 1                 # written by a newer version
    data["totals"]["also_new"] = 2
    report = Report.from_dict(data)
    assert all(r.block_keep_frequency is None for r in report.layers)
    assert "from_the_future" not in report.to_dict()["layers"][0]


def test_render_html_needs_no_plotting_library():
    row = LayerRow(name="fc", kind="linear", shape=[8, 8], pattern="dense", pattern_spec={"kind": "dense"},
                   target_sparsity=0.0, sparsity=0.0, params=64, nonzero=64, dense_bytes=256, compressed_bytes=256,
                   dense_flops=128, compressed_flops=128)
    totals = dict(params=64, nonzero=64, sparsity=0.0, dense_bytes=256, compressed_bytes=256, dense_flops=128,
                  compressed_flops=128, model_params=72, model_dense_bytes=288, model_compressed_bytes=288)
    report = Report.from_dict({"model": "m <b>", "capture": {"method": "fx"}, "layers": [row.__dict__], "totals": totals})
    text = render_html(report, {})
    assert "matplotlib" not in sys.modules
    assert "m &lt;b&gt;" in text and "<b>" not in text.split("<main>")[1].split("</h1>")[0]


def test_html_to_a_missing_folder_fails_with_one_line_and_writes_nothing(artifact_a, tmp_path, capsys):
    target = tmp_path / "nowhere" / "r.html"
    assert main(["report", str(artifact_a), "--html", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compress: error:") and "does not exist" in err and "\n" not in err
    assert not target.parent.exists()
    assert main(["report", str(artifact_a), "--html", str(tmp_path)]) == 2     # a directory is not a file
    assert os.listdir(tmp_path) == ["nowhere"] or os.listdir(tmp_path) == []
