"""Shared by the calibration-based one-shot passes (``sparsegpt``, ``wanda``): calibration batches and
the sequential order in which layers are pruned.

Both papers prune layer after layer, each layer calibrated on the inputs it receives from the
model whose earlier layers are already pruned (SparseGPT, arXiv 2301.00774, section 3; Wanda,
arXiv 2306.11695, which follows the same procedure). The stages here are in forward order (the
order capture found the layers in): one stage per ``nn.Linear``, one per layer ``k`` of a stacked
LSTM/GRU/RNN (``weight_ih_l{k}`` multiplies layer k's input sequence, x_t or layer k-1's outputs,
and ``weight_hh_l{k}`` the previous hidden state h_{t-1}, gathered over every time step; both
directions of a bidirectional layer together). Inputs are recorded by
:class:`compressor.calibration.SequentialRecorder` (block by block through a stack of transformer
blocks, so the cost grows linearly with depth), from the model as it is now (``sequential``) or
from the dense reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
import torch.nn as nn

from ..calibration import SequentialRecorder, Stage, module_inputs, task_batches
from ..capture import Target
from ..tasks import TaskConfig

__all__ = ["calibration_batches", "stages", "stage_of", "recorder", "calibrated_stages", "record_inputs", "rows_note"]

_LAYER = re.compile(r"_l(\d+)(_reverse)?$")


def calibration_batches(state, config: TaskConfig) -> Iterator:
    """Model inputs of the calibration task, batch after batch (:func:`compressor.calibration.task_batches`:
    positional inputs a tuple, keyword inputs a mapping). Lazy: the task is built at the first batch,
    so a pass that ends up recording nothing never builds it."""
    yield from task_batches(state.task(config))


def stages(targets: list[Target]) -> list[tuple[str, list[Target]]]:
    """Targets grouped into the stages that share one recording, in forward order: (module path, targets)."""
    order: dict[tuple[str, int], list[Target]] = {}
    for t in targets:
        layer = _LAYER.search(t.param_name) if t.kind in ("lstm", "gru", "rnn") else None
        order.setdefault((t.module_path, int(layer.group(1)) if layer else -1), []).append(t)
    return [(path, group) for (path, _), group in order.items()]


def stage_of(module_path: str, group: list[Target]) -> Stage:
    """The recording stage of one module's targets (a recurrent layer k: its first k + 1 layers)."""
    if group[0].kind in ("lstm", "gru", "rnn"):
        return Stage(module_path, 1 + max(int(_LAYER.search(t.param_name).group(1)) for t in group))
    return Stage(module_path)


def record_inputs(model: nn.Module, module_path: str, batches: Iterator, rows: int,
                  layers: int | None = None) -> dict[str, torch.Tensor]:
    """Calibration rows of every weight of one module: {parameter name: (N, in)}, at most ``rows`` each
    (:func:`compressor.calibration.module_inputs`; a recurrent module's forward stops at its first
    call, and only its first ``layers`` layers' inputs are recomputed)."""
    return module_inputs(model, module_path, batches, rows, layers, stop_at_recurrent=True)


def recorder(state, groups: list[tuple[str, list[Target]]], task: TaskConfig, rows: int,
             sequential: bool) -> SequentialRecorder:
    """The calibration recorder of the stages ``groups`` (:class:`compressor.calibration.SequentialRecorder`):
    on the model as it is now (``sequential``) or on the dense reference."""
    model = state.model if sequential or state.reference is None else state.reference
    return SequentialRecorder(model, [stage_of(p, g) for p, g in groups], calibration_batches(state, task), rows)


def calibrated_stages(state, config, targets: list[Target], result) -> Iterator[tuple[list[Target], dict]]:
    """(targets of one module, their calibration inputs by parameter name), module by module in
    forward order, for the one-shot passes (``config``: pattern, m, calibration, rows, sequential).
    With the N:M pattern a layer with fewer than M inputs is left as it was, recorded in
    ``result.skipped``; how the inputs were recorded goes to ``result.notes``."""
    groups = []
    for module_path, group in stages(targets):
        if config.pattern == "nm":
            transposable = getattr(config, "transposable", False)
            for t in group:
                if t.in_features < config.m or (transposable and t.out_features < config.m):
                    result.skipped[t.name] = f"shape {list(t.shape)} is narrower than m={config.m}: left as it was"
            group = [t for t in group
                     if t.name not in result.skipped]
        if group:
            groups.append((module_path, group))
    rec = recorder(state, groups, config.calibration, config.rows, config.sequential)
    for (module_path, group) in groups:
        inputs = rec.inputs(stage_of(module_path, group))
        yield group, {t.param_name: inputs[t.param_name] for t in group if t.param_name in inputs}
    result.notes.extend(rec.notes)


def rows_note(n_rows: int, columns: int) -> str | None:
    """A note when there are fewer calibration rows than input columns (X^T X is then singular)."""
    if n_rows < columns:
        return (f"only {n_rows} calibration rows for {columns} input columns: X^T X has rank <= {n_rows} and only the "
                "damping makes it invertible; raise rows or the calibration batch_size/seq_len")
    return None
