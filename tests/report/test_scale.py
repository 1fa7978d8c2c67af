"""A 100-layer model: the pipeline's report renders as HTML in a few seconds."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

import compressor
from compressor.recipe import parse_recipe
from compressor.report_html import artifact_html

HERE = Path(__file__).resolve().parent


def test_hundred_layer_report(tmp_path, parse_page):
    spec = compressor.load_model(f"{HERE / 'report_models.py'}:deep_mlp")
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "block_prune", "block": [8, 8], "sparsity": 0.5}]})
    compressor.Pipeline(recipe).run(spec, out=tmp_path / "art", console=Console(file=io.StringIO()))

    start = time.perf_counter()
    text = artifact_html(tmp_path / "art")
    elapsed = time.perf_counter() - start

    page = parse_page(text)
    names = [f"layers.{i}.weight" for i in range(100)]
    assert [img["data-layer"] for img in page.images] == names
    rows = [r["layer"] for r in page.tables["layers"] if r["layer"] not in (None, "total")]
    assert rows == names
    report = compressor.read_report(tmp_path / "art")
    assert all(r.sparsity == 0.5 for r in report.layers)          # 8x8 blocks of 64x64: exactly half kept
    assert text.count('<rect x="') > 100 * 6                         # 3 panels x 2 bars per layer
    assert elapsed < 10, f"rendering 100 layers took {elapsed:.1f}s"
