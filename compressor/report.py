"""The per-layer report: one set of dataclasses, rendered as a rich table or JSON.

Sparsity is measured from the final weights (the fraction of exact zeros), not taken from the
recipe. Bytes are priced in the storage format of each layer's pattern (see
:mod:`compressor.patterns`); FLOPs are per token (per time step for recurrent weights):
2 x multiply-adds of the matrix-vector product, dense vs the kept weights only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .patterns import Dense, Pattern

__all__ = ["LayerRow", "Totals", "Report", "layer_row", "compute_totals", "render_report"]


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

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["layers"] = [LayerRow(**row) for row in data.get("layers", [])]
        data["totals"] = Totals(**data["totals"])
        return cls(**data)


def layer_row(target, weight: torch.Tensor, pattern: Pattern | None, target_sparsity: float,
              passes: list[str], notes: list[str]) -> LayerRow:
    """Measure one final weight matrix."""
    pattern = pattern or Dense()
    nonzero_mask = weight != 0
    params = weight.numel()
    nonzero = int(nonzero_mask.sum())
    elem = weight.element_size()
    gate_sparsity = None
    if target.gates:
        gate_sparsity = {
            g: round(1.0 - float(nonzero_mask[r0:r1].float().mean()), 6) for g, r0, r1 in target.gates
        }
    dense_bytes = params * elem
    return LayerRow(
        name=target.name,
        kind=target.kind,
        shape=list(target.shape),
        pattern=pattern.describe(),
        pattern_spec=pattern.to_dict(),
        target_sparsity=round(float(target_sparsity), 6),
        sparsity=round(1.0 - nonzero / params, 6),
        params=params,
        nonzero=nonzero,
        dense_bytes=dense_bytes,
        compressed_bytes=pattern.storage_bytes(nonzero_mask, elem) if not isinstance(pattern, Dense) else dense_bytes,
        dense_flops=2 * params,
        compressed_flops=2 * nonzero,
        gate_sparsity=gate_sparsity,
        passes=list(passes),
        notes=list(notes),
    )


def compute_totals(rows: list[LayerRow], model: torch.nn.Module) -> Totals:
    """Totals over ``rows`` and the whole model's parameters (tied parameters counted once)."""
    params = sum(r.params for r in rows)
    nonzero = sum(r.nonzero for r in rows)
    model_params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
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


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def _ratio(dense: float, compressed: float) -> str:
    return f"{dense / compressed:.2f}x" if compressed else "-"


def _console():
    from rich.console import Console

    probe = Console()
    # Piped output keeps the whole table instead of squeezing it into 80 columns.
    return probe if probe.is_terminal else Console(width=160)


def render_report(report: Report, console=None) -> None:
    """Print the report as a rich table with a totals row, plus metrics and notes."""
    from rich.table import Table

    console = console or _console()
    table = Table(title=f"compressor report: {report.model}")
    for col in ("layer", "kind", "shape", "pattern", "target", "sparsity", "nonzero / params",
                "bytes dense -> sparse", "FLOPs/token dense -> sparse", "kernel"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "pattern", "kernel") else "right")
    for r in report.layers:
        table.add_row(
            r.name, r.kind, "x".join(map(str, r.shape)), r.pattern, f"{r.target_sparsity:.1%}", f"{r.sparsity:.1%}",
            f"{_human(r.nonzero)} / {_human(r.params)}",
            f"{_human(r.dense_bytes)} -> {_human(r.compressed_bytes)}",
            f"{_human(r.dense_flops)} -> {_human(r.compressed_flops)}",
            r.kernel or "dense",
        )
    t = report.totals
    table.add_section()
    table.add_row(
        "total", "", "", "", "", f"{t.sparsity:.1%}", f"{_human(t.nonzero)} / {_human(t.params)}",
        f"{_human(t.dense_bytes)} -> {_human(t.compressed_bytes)} ({_ratio(t.dense_bytes, t.compressed_bytes)})",
        f"{_human(t.dense_flops)} -> {_human(t.compressed_flops)} ({_ratio(t.dense_flops, t.compressed_flops)})",
        "", style="bold",
    )
    console.print(table)
    console.print(
        f"capture: {report.capture.get('method')}  |  layers: {len(report.layers)}  |  "
        f"whole model parameter bytes {_human(t.model_dense_bytes)} -> {_human(t.model_compressed_bytes)} "
        f"({_ratio(t.model_dense_bytes, t.model_compressed_bytes)})"
    )
    for name, values in report.metrics.items():
        before, after = values.get("before"), values.get("after")
        if before is not None and after is not None:
            console.print(f"{name}: before {before:.4g} -> after {after:.4g} ({(after - before) / before:+.1%})")
        elif after is not None:
            console.print(f"{name}: {after:.4g}")
    for r in report.layers:
        for note in r.notes:
            console.print(f"[yellow]note[/yellow] {r.name}: {note}")
