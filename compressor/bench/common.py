"""Helpers shared by the benchmarks: interleaved median timing, tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from compressor.outputs import atomic_file
from compressor.timing import time_interleaved  # noqa: F401  (the bench modules import it from here)

__all__ = ["machine_info", "time_interleaved", "print_table", "write_json", "standalone", "timing_row", "rnn_cells", "cells_step"]


def machine_info() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def timing_row(section: str, case: str, impl: str, t: dict, ref_s: float | None = None,
               extra: dict | None = None) -> dict:
    """One JSON row from a :func:`time_interleaved` entry: medians in microseconds and, given the
    reference's median ``ref_s``, the speed-up over it; ``extra`` keys are appended."""
    row = {"section": section, "case": case, "impl": impl, "median_us": t["median_s"] * 1e6, "min_us": t["min_s"] * 1e6,
           "runs": t["runs"]}
    if ref_s is not None:
        row["speedup_vs_dense"] = ref_s / t["median_s"]
    row.update(extra or {})
    return row


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a rich table (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col not in (columns[0],) else "left")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    Console(width=max(100, len(columns) * 14)).print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def standalone(name: str, add_arguments, run, doc: str) -> int:
    """``python -m compressor.bench.NAME`` entry: the same arguments as ``compress bench NAME``."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"compress bench {name}", description=(doc or name).strip().splitlines()[0])
    add_arguments(parser)
    return int(run(parser.parse_args()) or 0)


def rnn_cells(rnn):
    """One ``nn.LSTMCell``/``nn.GRUCell`` per layer of a unidirectional ``nn.LSTM``/``nn.GRU``, with
    its weights: the usual dense streaming step that sparse steps are timed against."""
    make = nn.LSTMCell if isinstance(rnn, nn.LSTM) else nn.GRUCell
    cells = []
    for layer in range(rnn.num_layers):
        cell = make(rnn.input_size if layer == 0 else rnn.hidden_size, rnn.hidden_size, bias=rnn.bias,
                    dtype=rnn.weight_ih_l0.dtype)
        with torch.no_grad():
            for part in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if rnn.bias else ()):
                getattr(cell, part).copy_(getattr(rnn, f"{part}_l{layer}"))
        cells.append(cell)
    return cells


def cells_step(cells, x, state):
    """One step through stacked cells; ``state`` is ``(h, c)`` (LSTM) or ``h`` (GRU), each
    ``(layers, batch, hidden)``. Returns the top layer's output."""
    lstm = isinstance(cells[0], nn.LSTMCell)
    for layer, cell in enumerate(cells):
        x = cell(x, (state[0][layer], state[1][layer]))[0] if lstm else cell(x, state[layer])
    return x
