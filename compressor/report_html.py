"""The HTML report: one self-contained file rendered from :class:`compressor.report.Report`.

Everything is inline: CSS in a ``<style>`` element, charts as ``<svg>`` (:mod:`compressor.charts`),
mask pictures as ``data:image/png`` URIs (:mod:`compressor.mask_pictures`); no scripts and no
network. The page has the per-layer table (numbers from the report, with the raw value of every
cell in ``data-value``), a chart of sparsity, bytes and FLOPs per layer, one mask picture per
layer, and the metrics before/after. :func:`render_comparison_html` draws two reports side by side
from a :class:`compressor.report.Comparison`.

    compress report DIR --html report.html [--compare OTHER_DIR]

:func:`render_sensitivity_html` draws the curves of ``compress sensitivity`` in the same style.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from pathlib import Path

from .charts import PALETTE, Line, Panel, Series, bar_chart_svg, line_chart_svg
from .outputs import atomic_file
from .mask_pictures import COLORS, MaskPicture, layer_picture
from .report import Comparison, LayerRow, Report, human, ratio

__all__ = ["layer_pictures", "render_html", "render_comparison_html", "write_html", "artifact_html",
           "render_sensitivity_html"]

DARK, LIGHT, A_COLOR, B_COLOR = "#1f4e8c", "#b9c7db", "#1f4e8c", "#d9822b"
TALL = 25   # tables with more rows scroll inside a box (header kept in view)
NAV = ('<nav class="meta">jump to: <a href="#chart">chart</a> · <a href="#layers-table">table</a> · '
       '<a href="#masks">masks</a> · <a href="#metrics-table">metrics</a></nav>')

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c2430;margin:0;background:#fff}
main{max-width:1320px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:32px 0 10px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
.meta{color:#5b6675;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #dde3ea;border-radius:6px;padding:10px 14px;min-width:170px;background:#fafbfc}
.card .k{font-size:12px;color:#5b6675}.card .v{font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}
.card .s{font-size:12px;color:#5b6675}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 7px;border-bottom:1px solid #e6eaf0;text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
th{background:#eef2f7;position:sticky;top:0;font-weight:600;white-space:normal;vertical-align:bottom}
td.l,th.l{text-align:left}td.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
tbody tr:nth-child(even){background:#f7f9fb}tfoot td{font-weight:600;border-top:2px solid #c5ceda}
.scroll{overflow-x:auto}.scroll.tall{max-height:70vh;overflow-y:auto;border-bottom:1px solid #dde3ea}.chart{max-width:100%;height:auto}
.masks{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0;border:1px solid #dde3ea;border-radius:6px;padding:10px;background:#fff;max-width:100%;width:min-content;min-width:230px}
figure img{display:block;image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid #c5ceda;max-width:100%}
figcaption{font-size:12px;color:#3d4856;margin-top:6px}
figcaption b{font-family:ui-monospace,Menlo,Consolas,monospace;color:#1c2430}
.pair{display:flex;gap:18px;align-items:flex-start}.pair>div{min-width:200px}.pair .side{font-size:12px;font-weight:600;margin-bottom:3px;min-height:34px}
.sw{display:inline-block;width:11px;height:11px;border:1px solid #9aa6b5;vertical-align:-1px;margin:0 3px 0 6px}
.grad{display:inline-block;width:70px;height:10px;border:1px solid #9aa6b5;vertical-align:-1px;margin:0 4px}
.maskbox{display:flex;gap:4px}.gates{display:flex;flex-direction:column;font-size:11px;color:#5b6675;min-width:58px}
.gates div{flex:1;border-top:1px dashed #9aa6b5;padding-left:2px;white-space:nowrap}.gates div:first-child{border-top:none}
.missing{width:120px;height:60px;border:1px dashed #b0b8c4;color:#7a8594;font-size:12px;display:flex;align-items:center;justify-content:center}
.notes li{font-size:13px}
"""


def _rgb(color: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % color


def _td(key: str, value, text: str | None = None, cls: str = "") -> str:
    """A cell with its raw value in ``data-value`` (JSON), so the page can be checked against report.json."""
    shown = escape(str(value) if text is None else text)
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-key="{key}" data-value="{escape(json.dumps(value))}">{shown}</td>'


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def layer_pictures(report: Report, masks: Mapping) -> dict[str, MaskPicture]:
    """One picture per layer of ``report``, from ``masks`` ({parameter name: bool mask})."""
    return {row.name: layer_picture(row, masks.get(row.name)) for row in report.layers}


def _legend(pic: MaskPicture) -> str:
    if pic.view == "frequency":
        lo, mid, hi = (_rgb(c) for c in COLORS["freq"])
        swatch = f'never<span class="grad" style="background:linear-gradient(90deg,{lo},{mid},{hi})"></span>always'
    elif pic.view == "missing":
        swatch = f'<span class="sw" style="background:{_rgb(COLORS["missing"])}"></span>unknown'
    elif pic.view == "blocks" and "shade" in pic.legend:
        swatch = (f'pruned<span class="grad" style="background:linear-gradient(90deg,{_rgb(COLORS["pruned"])},'
                  f'{_rgb(COLORS["kept"])})"></span>kept')
    else:
        swatch = (f'<span class="sw" style="background:{_rgb(COLORS["kept"])}"></span>kept'
                  f'<span class="sw" style="background:{_rgb(COLORS["pruned"])}"></span>pruned')
    return f"<div>{swatch}</div>" + (f"<div>{escape(pic.legend)}</div>" if pic.legend else "")


def _img(pic: MaskPicture, row: LayerRow, side: str = "") -> str:
    """The picture, and for recurrent layers a column naming the gates (rows split evenly) beside it."""
    width, height = pic.display_size
    alt = f"mask of {pic.name}{' in ' + side if side else ''}: {pic.caption}"
    img = (f'<img class="mask" data-layer="{escape(pic.name)}" width="{width}" height="{height}" '
           f'alt="{escape(alt)}" src="{pic.data_uri()}">')
    gates = row.gate_sparsity or {}
    if not gates or pic.view == "tile" or height / len(gates) < 14:
        return img
    labels = "".join(f'<div title="gate {escape(g)}: sparsity {_pct(v)}">{escape(g)} {_pct(v)}</div>'
                     for g, v in gates.items())
    return f'<div class="maskbox">{img}<div class="gates" style="height:{height}px">{labels}</div></div>'



def _figure(row: LayerRow, pic: MaskPicture) -> str:
    return (f'<figure data-layer="{escape(row.name)}">{_img(pic, row)}<figcaption><b>{escape(row.name)}</b> '
            f'{escape("x".join(map(str, row.shape)))} · {escape(row.pattern)} · sparsity {_pct(row.sparsity)}'
            f'<div>{escape(pic.caption)}</div>{_legend(pic)}</figcaption></figure>')


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def _card(key: str, value: str, sub: str = "") -> str:
    return f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{escape(value)}</div>' \
           f'<div class="s">{escape(sub)}</div></div>'


def _metric_change(before: float | None, after: float | None) -> str:
    return f"{(after - before) / before:+.1%}" if before and after is not None else ""


def _layer_table(report: Report) -> str:
    head = ["layer", "kind", "shape", "pattern", "target", "sparsity", "nonzero", "params", "bytes dense",
            "bytes sparse", "bytes ×", "FLOPs dense", "FLOPs sparse", "FLOPs ×", "kernel"]
    left = {"layer", "kind", "pattern", "kernel"}
    rows = []
    for r in report.layers:
        rows.append(
            f'<tr data-layer="{escape(r.name)}">' + _td("name", r.name, cls="l name") + _td("kind", r.kind, cls="l")
            + _td("shape", r.shape, "x".join(map(str, r.shape))) + _td("pattern", r.pattern, cls="l")
            + _td("target_sparsity", r.target_sparsity, _pct(r.target_sparsity)) + _td("sparsity", r.sparsity, _pct(r.sparsity))
            + _td("nonzero", r.nonzero, human(r.nonzero)) + _td("params", r.params, human(r.params))
            + _td("dense_bytes", r.dense_bytes, human(r.dense_bytes))
            + _td("compressed_bytes", r.compressed_bytes, human(r.compressed_bytes))
            + f"<td>{ratio(r.dense_bytes, r.compressed_bytes)}</td>"
            + _td("dense_flops", r.dense_flops, human(r.dense_flops))
            + _td("compressed_flops", r.compressed_flops, human(r.compressed_flops))
            + f"<td>{ratio(r.dense_flops, r.compressed_flops)}</td>"
            + _td("kernel", r.kernel, r.kernel or "dense", cls="l")
            + "</tr>")
    t = report.totals
    foot = ('<tr data-layer="total"><td class="l">total</td><td></td><td></td><td></td><td></td>'
            + _td("sparsity", t.sparsity, _pct(t.sparsity)) + _td("nonzero", t.nonzero, human(t.nonzero))
            + _td("params", t.params, human(t.params)) + _td("dense_bytes", t.dense_bytes, human(t.dense_bytes))
            + _td("compressed_bytes", t.compressed_bytes, human(t.compressed_bytes))
            + f"<td>{ratio(t.dense_bytes, t.compressed_bytes)}</td>" + _td("dense_flops", t.dense_flops, human(t.dense_flops))
            + _td("compressed_flops", t.compressed_flops, human(t.compressed_flops))
            + f"<td>{ratio(t.dense_flops, t.compressed_flops)}</td><td></td></tr>")
    ths = "".join(f'<th class="{"l" if h in left else ""}">{escape(h)}</th>' for h in head)
    tall = " tall" if len(report.layers) > TALL else ""
    return (f'<div class="scroll{tall}"><table id="layers"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"<tfoot>{foot}</tfoot></table></div>")


def _metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    if not metrics:
        return "<p>No metrics were recorded.</p>"
    rows = "".join(
        f'<tr data-metric="{escape(k)}"><td class="l">{escape(k)}</td>'
        + _td("before", v.get("before"), "-" if v.get("before") is None else f"{v['before']:.4g}")
        + _td("after", v.get("after"), "-" if v.get("after") is None else f"{v['after']:.4g}")
        + f"<td>{_metric_change(v.get('before'), v.get('after'))}</td></tr>" for k, v in metrics.items())
    return ('<table id="metrics"><thead><tr><th class="l">metric</th><th>before</th><th>after</th><th>change</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


def _notes(report: Report) -> str:
    items = [f"<li><b>{escape(r.name)}</b>: {escape(n)}</li>" for r in report.layers for n in r.notes]
    return f'<h2>Notes</h2><ul class="notes">{"".join(items)}</ul>' if items else ""


def render_html(report: Report, masks: Mapping) -> str:
    """The HTML page of one report; ``masks`` maps parameter names to bool masks (dense layers may be absent)."""
    pictures = layer_pictures(report, masks)
    t = report.totals
    names = [r.name for r in report.layers]
    chart = bar_chart_svg(names, [
        Panel("sparsity", [Series("target", LIGHT, [r.target_sparsity for r in report.layers]),
                           Series("measured", DARK, [r.sparsity for r in report.layers])], _pct, 1.0),
        Panel("bytes", [Series("dense", LIGHT, [r.dense_bytes for r in report.layers]),
                        Series("compressed", DARK, [r.compressed_bytes for r in report.layers])], human),
        Panel("FLOPs / token", [Series("dense", LIGHT, [r.dense_flops for r in report.layers]),
                                Series("compressed", DARK, [r.compressed_flops for r in report.layers])], human),
    ], "sparsity, bytes and FLOPs per layer")
    cards = [_card("layer sparsity", _pct(t.sparsity), f"{human(t.nonzero)} of {human(t.params)} weights kept"),
             _card("layer bytes", f"{human(t.dense_bytes)} → {human(t.compressed_bytes)}",
                   f"{ratio(t.dense_bytes, t.compressed_bytes)} smaller"),
             _card("FLOPs / token", f"{human(t.dense_flops)} → {human(t.compressed_flops)}",
                   f"{ratio(t.dense_flops, t.compressed_flops)} fewer"),
             _card("whole-model bytes", f"{human(t.model_dense_bytes)} → {human(t.model_compressed_bytes)}",
                   ratio(t.model_dense_bytes, t.model_compressed_bytes))]
    for k, v in report.metrics.items():
        before, after = v.get("before"), v.get("after")
        if before is not None and after is not None:
            value = f"{before:.4g} → {after:.4g}"
        else:
            value = "-" if after is None else f"{after:.4g}"
        cards.append(_card(k, value, _metric_change(before, after)))
    meta = " · ".join(escape(s) for s in (
        f"{len(report.layers)} layers", f"capture: {report.capture.get('method')}",
        f"recipe: {report.recipe}" if report.recipe else "", f"created {report.created}" if report.created else "",
        f"{report.elapsed_s:.1f} s") if s)
    body = [f"<h1>compressor report: {escape(report.model)}</h1>", f'<div class="meta">{meta}</div>',
            f'<div class="cards">{"".join(cards)}</div>', NAV,
            '<h2 id="chart">Per layer: sparsity, bytes and FLOPs</h2>', f'<div class="scroll">{chart}</div>',
            '<h2 id="layers-table">Layers</h2>', _layer_table(report),
            '<h2 id="masks">Masks</h2>',
            f'<div class="masks">{"".join(_figure(r, pictures[r.name]) for r in report.layers)}</div>',
            '<h2 id="metrics-table">Metrics</h2>', _metrics_table(report.metrics), _notes(report)]
    return _page(f"compressor report: {report.model}", body)


def write_html(path: str | Path, text: str, force: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically; without ``force`` an existing file is refused."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _cell(side: str, row: LayerRow | None, key: str, fmt, cls: str = "") -> str:
    """A comparison cell ``a.sparsity`` / ``b.pattern``...: the value of ``key`` in one report's row."""
    return "<td>-</td>" if row is None else _td(f"{side}.{key}", getattr(row, key), fmt(getattr(row, key)), cls)


def _comparison_table(c: Comparison) -> str:
    head = ["layer", "pattern A", "pattern B", "sparsity A", "sparsity B", "bytes A", "bytes B", "bytes B/A",
            "FLOPs A", "FLOPs B", "FLOPs B/A"]
    rows = []
    for layer in c.layers:
        a, b = layer.a, layer.b
        rows.append(
            f'<tr data-layer="{escape(layer.name)}">{_td("name", layer.name, cls="l name")}'
            + _cell("a", a, "pattern", str, "l") + _cell("b", b, "pattern", str, "l")
            + _cell("a", a, "sparsity", _pct) + _cell("b", b, "sparsity", _pct)
            + _cell("a", a, "compressed_bytes", human) + _cell("b", b, "compressed_bytes", human)
            + _td("bytes_ratio", layer.bytes_ratio, _x(layer.bytes_ratio))
            + _cell("a", a, "compressed_flops", human) + _cell("b", b, "compressed_flops", human)
            + _td("flops_ratio", layer.flops_ratio, _x(layer.flops_ratio)) + "</tr>")
    ta, tb, tr = c.a.totals, c.b.totals, c.totals_ratio
    foot = (f'<tr data-layer="total"><td class="l">total</td><td></td><td></td>{_td("a.sparsity", ta.sparsity, _pct(ta.sparsity))}'
            f'{_td("b.sparsity", tb.sparsity, _pct(tb.sparsity))}'
            f'{_td("a.compressed_bytes", ta.compressed_bytes, human(ta.compressed_bytes))}'
            f'{_td("b.compressed_bytes", tb.compressed_bytes, human(tb.compressed_bytes))}'
            f'{_td("bytes_ratio", tr["compressed_bytes"], _x(tr["compressed_bytes"]))}'
            f'{_td("a.compressed_flops", ta.compressed_flops, human(ta.compressed_flops))}'
            f'{_td("b.compressed_flops", tb.compressed_flops, human(tb.compressed_flops))}'
            f'{_td("flops_ratio", tr["compressed_flops"], _x(tr["compressed_flops"]))}</tr>')
    ths = "".join(f'<th class="{"l" if h.startswith(("layer", "pattern")) else ""}">{escape(h)}</th>' for h in head)
    tall = " tall" if len(c.layers) > TALL else ""
    return (f'<div class="scroll{tall}"><table id="compare"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"<tfoot>{foot}</tfoot></table></div>")


def _comparison_metrics(c: Comparison) -> str:
    if not c.metrics:
        return "<p>No metrics were recorded.</p>"

    def value(v):
        return "-" if v is None else f"{v:.4g}"

    rows = "".join(
        f'<tr data-metric="{escape(k)}"><td class="l">{escape(k)}</td>'
        + "".join(_td(f"{side}.{when}", v[side].get(when), value(v[side].get(when)))
                  for side in ("a", "b") for when in ("before", "after")) + "</tr>"
        for k, v in c.metrics.items())
    return ('<table id="metrics"><thead><tr><th class="l">metric</th><th>A before</th><th>A after</th>'
            f"<th>B before</th><th>B after</th></tr></thead><tbody>{rows}</tbody></table>")


def _side(label: str, row: LayerRow | None, pic: MaskPicture | None) -> str:
    if row is None or pic is None:
        return f'<div><div class="side">{escape(label)}</div><div class="missing">not in {escape(label)}</div></div>'
    return (f'<div><div class="side">{escape(label)}: {escape(row.pattern)} · {_pct(row.sparsity)}</div>{_img(pic, row, label)}'
            f'<figcaption>{escape(pic.caption)}{_legend(pic)}</figcaption></div>')


def render_comparison_html(comparison: Comparison, masks_a: Mapping, masks_b: Mapping) -> str:
    """The HTML page of two reports side by side: table, chart, metrics and the masks of A next to B."""
    c = comparison
    pics_a, pics_b = layer_pictures(c.a, masks_a), layer_pictures(c.b, masks_b)
    names = [layer.name for layer in c.layers]

    def values(side: str, key: str) -> list:
        return [None if getattr(layer, side) is None else getattr(getattr(layer, side), key) for layer in c.layers]

    chart = bar_chart_svg(names, [
        Panel("sparsity", [Series("A", A_COLOR, values("a", "sparsity")), Series("B", B_COLOR, values("b", "sparsity"))],
              _pct, 1.0),
        Panel("compressed bytes", [Series("A", A_COLOR, values("a", "compressed_bytes")),
                                   Series("B", B_COLOR, values("b", "compressed_bytes"))], human),
        Panel("FLOPs / token", [Series("A", A_COLOR, values("a", "compressed_flops")),
                                Series("B", B_COLOR, values("b", "compressed_flops"))], human),
    ], "A vs B per layer")
    ta, tb, tr = c.a.totals, c.b.totals, c.totals_ratio
    cards = [_card("layer sparsity A → B", f"{_pct(ta.sparsity)} → {_pct(tb.sparsity)}"),
             _card("layer bytes A → B", f"{human(ta.compressed_bytes)} → {human(tb.compressed_bytes)}",
                   f"B/A {_x(tr['compressed_bytes'])}"),
             _card("FLOPs / token A → B", f"{human(ta.compressed_flops)} → {human(tb.compressed_flops)}",
                   f"B/A {_x(tr['compressed_flops'])}")]
    figures = "".join(
        f'<figure data-layer="{escape(layer.name)}"><figcaption><b>{escape(layer.name)}</b></figcaption>'
        f'<div class="pair">{_side("A", layer.a, pics_a.get(layer.name))}{_side("B", layer.b, pics_b.get(layer.name))}'
        "</div></figure>" for layer in c.layers)
    body = [f"<h1>compressor compare: {escape(c.a_label)} vs {escape(c.b_label)}</h1>",
            f'<div class="meta"><b>A</b> = {escape(c.a_label)} ({escape(c.a.model)}, {len(c.a.layers)} layers)<br>'
            f'<b>B</b> = {escape(c.b_label)} ({escape(c.b.model)}, {len(c.b.layers)} layers)<br>'
            "ratios are B / A: below 1.00x, B is smaller</div>",
            f'<div class="cards">{"".join(cards)}</div>', NAV,
            '<h2 id="chart">Per layer: A vs B</h2>', f'<div class="scroll">{chart}</div>',
            '<h2 id="layers-table">Layers</h2>', _comparison_table(c),
            '<h2 id="masks">Masks, A next to B</h2>', f'<div class="masks">{figures}</div>',
            '<h2 id="metrics-table">Metrics</h2>', _comparison_metrics(c)]
    return _page(f"compressor compare: {c.a_label} vs {c.b_label}", body)


def artifact_html(directory: str | Path, compare: str | Path | None = None) -> str:
    """The HTML page of an artifact directory (or of two side by side with ``compare``)."""
    from .artifacts import load_masks, read_report
    from .report import compare_reports

    report, masks = read_report(directory), load_masks(directory)
    if compare is None:
        return render_html(report, masks)
    comparison = compare_reports(report, read_report(compare), str(directory), str(compare))
    return render_comparison_html(comparison, masks, load_masks(compare))


def render_sensitivity_html(curves: dict) -> str:
    """The page of ``compress sensitivity``: the metric of the model with one layer pruned, against that
    layer's sparsity (a line per layer, the dense model dashed), the table of values and the allocation
    (``curves``: :func:`compressor.sensitivity.read_curves`'s data, with its ``allocation``)."""
    metric, dense, allocation = curves["metric"], curves["dense"], curves.get("allocation")
    names = list(curves["layers"])
    lines = [Line(n, PALETTE[i % len(PALETTE)], [(0.0, dense)] + [(p["measured_sparsity"], p["value"])
                                                                for p in curves["layers"][n]["points"]])
             for i, n in enumerate(names)]
    values = [y for line in lines for _, y in line.points]
    log_y = "perplexity" in metric and min(values) > 0 and max(values) / min(values) > 3
    where = f" on {curves['split']}" if curves.get("split") else ""
    chart = line_chart_svg(lines, "sparsity of the one pruned layer", metric + where, _pct, lambda v: f"{v:.4g}",
                           f"{curves['pass']}: one layer pruned at a time", dense, "dense", log_y, x_max=1.0)
    grid = sorted({p["sparsity"] for layer in curves["layers"].values() for p in layer["points"]})
    head = ["layer", "weights", *[_pct(s) for s in grid]] + (["allocated"] if allocation else [])
    rows = []
    for n in names:
        got = {p["sparsity"]: p["value"] for p in curves["layers"][n]["points"]}
        cells = "".join(_td(f"value@{s:g}", got.get(s), "-" if s not in got else f"{got[s]:.5g}") for s in grid)
        alloc = _td("allocated", allocation["layers"][n], _pct(allocation["layers"][n])) if allocation else ""
        rows.append(f'<tr data-layer="{escape(n)}">' + _td("name", n, cls="l name")
                    + _td("size", curves["layers"][n]["size"], human(curves["layers"][n]["size"])) + cells + alloc + "</tr>")
    ths = "".join(f'<th class="{"l" if h == "layer" else ""}">{escape(h)}</th>' for h in head)
    cards = [_card(f"{metric} dense", f"{dense:.5g}", where.strip()),
             _card("layers x sparsities", f"{len(names)} x {len(grid)}", curves["pass"])]
    if allocation:
        cards.append(_card(f"allocation at {_pct(allocation['budget'])}", f"{allocation['predicted_cost']:.4g}",
                           "predicted cost (sum of the layers' measured costs)"))
    body = [f"<h1>sensitivity: {escape(curves.get('model') or '')}</h1>",
            f'<div class="meta">{escape(curves["pass"])}, {len(names)} layers, each pruned alone on the dense model; '
            f"{escape(metric)}{escape(where)}</div>", f'<div class="cards">{"".join(cards)}</div>',
            '<h2 id="chart">Curves</h2>', f'<div class="scroll">{chart}</div>',
            '<h2 id="values">Values</h2>',
            f'<div class="scroll"><table id="sensitivity"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table></div>"]
    return _page(f"sensitivity: {curves.get('model') or curves['pass']}", body)
