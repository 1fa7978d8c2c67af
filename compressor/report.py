"""The per-layer report: one set of dataclasses, rendered as a rich table, JSON or HTML.

Sparsity is measured from the final weights (the fraction of exact zeros), not taken from the
recipe. Bytes are those the artifact writes for each layer: its weight in the packed layout
of its pattern (:mod:`compressor.packing`; gated layers: dense weight plus gates); FLOPs are per token (per time step for recurrent weights):
2 x multiply-adds of the matrix-vector product, dense vs the kept weights only.

:class:`Comparison` puts two reports side by side (per layer A vs B and the ratio B / A); it is
computed once here and rendered by the terminal, JSON and HTML views alike
(:mod:`compressor.report_html` draws the HTML page).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from .patterns import Dense, Pattern

if TYPE_CHECKING:
    from .pipeline import CompressionState

__all__ = [
    "LayerRow", "Totals", "Report", "LayerComparison", "Comparison",
    "layer_row", "build_report", "compute_totals", "compare_reports", "render_report", "render_comparison",
    "onnx_metric", "human", "ratio",
]


@dataclass
class LayerRow:
    """One compressed (or captured and left dense) weight matrix."""

    name: str
    kind: str
    shape: list[int]
    pattern: str
    pattern_spec: dict
    target_sparsity: float
    sparsity: float
    params: int
    nonzero: int
    dense_bytes: int
    compressed_bytes: int
    dense_flops: int
    compressed_flops: int
    gate_sparsity: dict[str, float] | None = None
    kernel: str | None = None
    speedup: float | None = None
    passes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Input-dependent (gated) layers: for every block (rows = output block rows, columns = input
    # block columns) the fraction of calibration inputs on which the gate kept it, in [0, 1].
    # None for static patterns; the HTML report draws it as a heat map when present.
    block_keep_frequency: list[list[float]] | None = None
    # Other names of the same (tied) tensor, e.g. the embedding a decoder shares its weight with: the
    # row's sparsity holds under every one of them. None for an untied weight.
    tied: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "LayerRow":
        """Build a row from report.json, ignoring keys a newer writer may have added."""
        return cls(**_known(cls, data))


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Totals:
    """Sums over the captured layers, plus whole-model parameter bytes."""

    params: int
    nonzero: int
    sparsity: float
    dense_bytes: int
    compressed_bytes: int
    dense_flops: int
    compressed_flops: int
    model_params: int
    model_dense_bytes: int
    model_compressed_bytes: int


@dataclass
class Report:
    """Everything ``compress report`` shows; serialised as report.json."""

    model: str
    capture: dict[str, Any]
    layers: list[LayerRow]
    totals: Totals
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    recipe: str | None = None
    created: str = ""
    elapsed_s: float = 0.0
    #: why the recipe's ONNX export failed (the artifact was written without graphs); None: it did not
    export_error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        data = _known(cls, data)
        data["layers"] = [LayerRow.from_dict(row) for row in data.get("layers", [])]
        data["totals"] = Totals(**_known(Totals, data["totals"]))
        data["metrics"] = _upgrade_metrics(data.get("metrics", {}))
        return cls(**data)


def onnx_metric(file: str) -> str:
    """Report metric name of an exported graph's largest error relative to the output scale."""
    return f"onnx_rel_error({file})"


def _upgrade_metrics(metrics: dict) -> dict:
    """Reports written before 2026-11-24 kept ONNX errors as ``{"onnx": {"model": e, "<rnn>.step.onnx": e}}``,
    outside the ``{name: {before, after}}`` form every view reads: turn them into one metric per graph."""
    old = metrics.get("onnx")
    if not isinstance(old, dict) or "after" in old or "before" in old:
        return metrics
    out = {k: v for k, v in metrics.items() if k != "onnx"}
    for graph, err in old.items():
        out[onnx_metric("model.onnx" if graph == "model" else graph)] = {"after": err}
    return out


def layer_row(target, weight: torch.Tensor, pattern: Pattern | None, target_sparsity: float,
              passes: list[str], notes: list[str], mask: torch.Tensor | None = None) -> LayerRow:
    """Measure one final weight matrix. ``mask``: the layer's saved mask (the compressed bytes are
    those its packed layout takes in the artifact); without one, the non-zeros stand for it."""
    pattern = pattern or Dense()
    nonzero_mask = weight != 0
    stored_mask = nonzero_mask if mask is None else mask.to(torch.bool).cpu()
    params = weight.numel()
    nonzero = int(nonzero_mask.sum())
    elem = weight.element_size()
    gate_sparsity = None
    if target.gates:
        gate_sparsity = {
            g: round(1.0 - float(nonzero_mask[r0:r1].float().mean()), 6) for g, r0, r1 in target.gates
        }
    dense_bytes = params * elem
    sparsity = round(1.0 - nonzero / params, 6)
    notes = list(notes)
    if target.aliases:
        notes.append(f"tied: the same tensor as {', '.join(target.aliases)}, pruned once; its {sparsity:.1%} sparsity "
                     "holds under every name (every use of it, an embedding lookup too, sees the pruned weights)")
    return LayerRow(
        name=target.name,
        kind=target.kind,
        shape=list(target.shape),
        pattern=pattern.describe(),
        pattern_spec=pattern.to_dict(),
        target_sparsity=round(float(target_sparsity), 6),
        sparsity=sparsity,
        params=params,
        nonzero=nonzero,
        dense_bytes=dense_bytes,
        compressed_bytes=pattern.storage_bytes(stored_mask, elem) if not isinstance(pattern, Dense) else dense_bytes,
        dense_flops=2 * params,
        compressed_flops=2 * nonzero,
        gate_sparsity=gate_sparsity,
        passes=list(passes),
        notes=notes,
        tied=list(target.aliases) or None,
    )


def build_report(state: CompressionState, masks: dict[str, torch.Tensor], metrics: dict[str, dict[str, float]],
                 notes: dict[str, list[str]] | None = None, elapsed_s: float = 0.0) -> Report:
    """The report of a pipeline run, complete before it is written: one row per captured layer,
    measured from its final weight (``masks``: the saved masks) and filled from its record (what the
    passes did: :class:`compressor.pipeline.LayerRecord`); ``notes``: more notes by layer name (the
    ONNX export's), after the row's own."""
    from .swaps import dense_weight

    model, rows = state.model, []
    for name, t in state.targets.items():
        r = state.layers[name]
        row = layer_row(t, dense_weight(model, t.module_path, t.param_name), r.pattern, r.target_sparsity, r.passes,
                        r.notes, mask=masks.get(name))
        row.kernel, row.speedup = r.kernel, r.speedup
        if r.compressed_flops is not None:  # a gated layer's: kept blocks and gate, not its non-zeros
            row.compressed_flops = r.compressed_flops
        if r.block_keep_frequency is not None:
            row.block_keep_frequency = r.block_keep_frequency
        row.notes += (notes or {}).get(name, [])
        rows.append(row)
    spec, captured = state.spec, state.capture
    return Report(
        model=spec.description or spec.source.get("kind", "model"),
        capture={"method": captured.method, "attempts": [list(a) for a in captured.attempts]},
        layers=rows,
        totals=compute_totals(rows, model),
        metrics=metrics,
        passes=state.pass_log,
        recipe=state.recipe.source,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        elapsed_s=round(elapsed_s, 3),
    )


def compute_totals(rows: list[LayerRow], model: torch.nn.Module) -> Totals:
    """Totals over ``rows`` and the whole model's parameters (tied parameters counted once).

    The whole model's dense bytes are those of its dense form whatever modules are swapped in
    (sparse kernels hold packed values, gated modules gate networks: neither is the dense model);
    its compressed bytes replace each captured layer's dense bytes by the layer's stored format
    (a gated layer's includes its gate)."""
    from .swaps import dense_model

    params = sum(r.params for r in rows)
    nonzero = sum(r.nonzero for r in rows)
    dense = dense_model(model)
    model_params = sum(p.numel() for p in dense.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    dense_bytes = sum(r.dense_bytes for r in rows)
    compressed_bytes = sum(r.compressed_bytes for r in rows)
    return Totals(
        params=params,
        nonzero=nonzero,
        sparsity=round(1.0 - nonzero / params, 6) if params else 0.0,
        dense_bytes=dense_bytes,
        compressed_bytes=compressed_bytes,
        dense_flops=sum(r.dense_flops for r in rows),
        compressed_flops=sum(r.compressed_flops for r in rows),
        model_params=model_params,
        model_dense_bytes=model_bytes,
        model_compressed_bytes=model_bytes - dense_bytes + compressed_bytes,
    )


def human(n: float) -> str:
    """A count in K/M/G units (``1.0M``), as the terminal and HTML views print it."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def ratio(dense: float, compressed: float) -> str:
    """``dense / compressed`` as ``1.45x``, or ``-`` when ``compressed`` is 0."""
    return f"{dense / compressed:.2f}x" if compressed else "-"


def _console():
    from rich.console import Console

    probe = Console()
    # Piped output keeps the whole table instead of squeezing it into 80 columns.
    return probe if probe.is_terminal else Console(width=160)


#: What a bare metric name does not say (printed beside its value).
_METRIC_HELP = {
    "output_rel_error": "vs the model before any pass: relative L2 over all float outputs on the example "
                        "inputs (random values of their recorded shapes and dtypes; integer inputs are random "
                        "token ids)",
}


def _kernel_cell(row) -> str:
    """The kernel column: what runs, with the measured speed-up of an installed kernel module."""
    kernel = row.kernel or "dense"
    if row.speedup is not None and not kernel.startswith(("dense", "gated")):
        return f"{kernel} ({row.speedup:.2f}x)"
    return kernel


def render_report(report: Report, console=None) -> None:
    """Print the report as a rich table with a totals row, plus metrics and notes."""
    from rich.table import Table

    console = console or _console()
    table = Table(title=f"compressor report: {report.model}")
    for col in ("layer", "kind", "shape", "pattern", "target", "sparsity", "nonzero / params",
                "bytes dense -> sparse", "FLOPs/token dense -> sparse", "kernel"):
        # a long layer name folds onto more lines rather than being cut (piped output especially)
        table.add_column(col, justify="left" if col in ("layer", "kind", "pattern", "kernel") else "right",
                         overflow="fold" if col == "layer" else "ellipsis")
    for r in report.layers:
        table.add_row(
            r.name + "".join(f"\n= {alias}" for alias in r.tied or ()), r.kind, "x".join(map(str, r.shape)), r.pattern, f"{r.target_sparsity:.1%}", f"{r.sparsity:.1%}",
            f"{human(r.nonzero)} / {human(r.params)}",
            f"{human(r.dense_bytes)} -> {human(r.compressed_bytes)}",
            f"{human(r.dense_flops)} -> {human(r.compressed_flops)}",
            _kernel_cell(r),
        )
    t = report.totals
    table.add_section()
    table.add_row(
        "total", "", "", "", "", f"{t.sparsity:.1%}", f"{human(t.nonzero)} / {human(t.params)}",
        f"{human(t.dense_bytes)} -> {human(t.compressed_bytes)} ({ratio(t.dense_bytes, t.compressed_bytes)})",
        f"{human(t.dense_flops)} -> {human(t.compressed_flops)} ({ratio(t.dense_flops, t.compressed_flops)})",
        "", style="bold",
    )
    console.print(table)
    console.print(
        f"capture: {report.capture.get('method')}  |  layers: {len(report.layers)}  |  "
        f"whole model parameter bytes {human(t.model_dense_bytes)} -> {human(t.model_compressed_bytes)} "
        f"({ratio(t.model_dense_bytes, t.model_compressed_bytes)})"
    )
    if report.export_error:
        console.print(f"ONNX export failed, the artifact has no graphs: {report.export_error}", markup=False)
    for name, values in report.metrics.items():
        before, after = values.get("before"), values.get("after")
        if before is not None and after is not None:
            console.print(f"{name}: before {before:.4g} -> after {after:.4g} ({(after - before) / before:+.1%})",
                          markup=False)  # metric names are data (a task may name them), not rich markup
        elif after is not None:
            console.print(f"{name}: {after:.4g}" + (f" ({_METRIC_HELP[name]})" if name in _METRIC_HELP else ""),
                          markup=False)
    for r in report.layers:
        for note in r.notes:
            console.print(f"[yellow]note[/yellow] {r.name}: {note}")


@dataclass
class LayerComparison:
    """One layer of two reports: its row in A and in B (None where a report lacks the layer)."""

    name: str
    a: LayerRow | None
    b: LayerRow | None

    def _ratio(self, key: str) -> float | None:
        if self.a is None or self.b is None or not getattr(self.a, key):
            return None
        return getattr(self.b, key) / getattr(self.a, key)

    @property
    def bytes_ratio(self) -> float | None:
        """Compressed bytes of B / A."""
        return self._ratio("compressed_bytes")

    @property
    def flops_ratio(self) -> float | None:
        """Compressed FLOPs per token of B / A."""
        return self._ratio("compressed_flops")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "a": asdict(self.a) if self.a else None,
            "b": asdict(self.b) if self.b else None,
            "bytes_ratio": self.bytes_ratio,
            "flops_ratio": self.flops_ratio,
        }


@dataclass
class Comparison:
    """Two reports side by side; ratios are B / A (below 1: B is smaller)."""

    a_label: str
    b_label: str
    a: Report
    b: Report
    layers: list[LayerComparison]

    @property
    def totals_ratio(self) -> dict[str, float | None]:
        """B / A of the layers' compressed bytes and FLOPs, and of the whole model's bytes."""
        ta, tb = self.a.totals, self.b.totals
        return {
            "compressed_bytes": tb.compressed_bytes / ta.compressed_bytes if ta.compressed_bytes else None,
            "compressed_flops": tb.compressed_flops / ta.compressed_flops if ta.compressed_flops else None,
            "model_compressed_bytes": (tb.model_compressed_bytes / ta.model_compressed_bytes
                                       if ta.model_compressed_bytes else None),
        }

    @property
    def metrics(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{metric: {"a": {before, after}, "b": {before, after}}}`` over both reports' metrics."""
        names = list(self.a.metrics) + [m for m in self.b.metrics if m not in self.a.metrics]
        return {m: {"a": dict(self.a.metrics.get(m, {})), "b": dict(self.b.metrics.get(m, {}))} for m in names}

    def to_dict(self) -> dict:
        return {
            "a_label": self.a_label,
            "b_label": self.b_label,
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": {"a": asdict(self.a.totals), "b": asdict(self.b.totals), "ratio": self.totals_ratio},
            "metrics": self.metrics,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "Comparison":
        return compare_reports(Report.from_dict(data["a"]), Report.from_dict(data["b"]),
                               data.get("a_label", "A"), data.get("b_label", "B"))


def compare_reports(a: Report, b: Report, a_label: str = "A", b_label: str = "B") -> Comparison:
    """Match the layers of two reports by name (A's order, then layers only B has)."""
    rows_a = {r.name: r for r in a.layers}
    rows_b = {r.name: r for r in b.layers}
    names = list(rows_a) + [n for n in rows_b if n not in rows_a]
    return Comparison(a_label, b_label, a, b, [LayerComparison(n, rows_a.get(n), rows_b.get(n)) for n in names])


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_comparison(comparison: Comparison, console=None) -> None:
    """Print two reports side by side: per layer A vs B and B / A, then the metrics of each."""
    from rich.table import Table

    console = console or _console()
    c = comparison
    table = Table(title=f"compressor compare: A = {c.a_label}  vs  B = {c.b_label}")
    for col in ("layer", "pattern A", "pattern B", "sparsity A", "sparsity B", "bytes A", "bytes B", "B/A",
                "FLOPs A", "FLOPs B", "B/A"):
        table.add_column(col, justify="left" if col.startswith(("layer", "pattern")) else "right")

    def cells(row: LayerRow | None, fmt) -> str:
        return "-" if row is None else fmt(row)

    for layer in c.layers:
        a, b = layer.a, layer.b
        table.add_row(
            layer.name, cells(a, lambda r: r.pattern), cells(b, lambda r: r.pattern),
            cells(a, lambda r: f"{r.sparsity:.1%}"), cells(b, lambda r: f"{r.sparsity:.1%}"),
            cells(a, lambda r: human(r.compressed_bytes)), cells(b, lambda r: human(r.compressed_bytes)),
            _x(layer.bytes_ratio),
            cells(a, lambda r: human(r.compressed_flops)), cells(b, lambda r: human(r.compressed_flops)),
            _x(layer.flops_ratio),
        )
    ta, tb, tr = c.a.totals, c.b.totals, c.totals_ratio
    table.add_section()
    table.add_row("total", "", "", f"{ta.sparsity:.1%}", f"{tb.sparsity:.1%}", human(ta.compressed_bytes),
                  human(tb.compressed_bytes), _x(tr["compressed_bytes"]), human(ta.compressed_flops),
                  human(tb.compressed_flops), _x(tr["compressed_flops"]), style="bold")
    console.print(table)
    if c.metrics:
        metrics = Table(title="metrics")
        for col in ("metric", "A before", "A after", "B before", "B after"):
            metrics.add_column(col, justify="left" if col == "metric" else "right")
        for name, values in c.metrics.items():
            metrics.add_row(name, _metric(values["a"].get("before")), _metric(values["a"].get("after")),
                            _metric(values["b"].get("before")), _metric(values["b"].get("after")))
        console.print(metrics)
