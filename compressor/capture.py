"""Find the weight matrices to compress: capture.

Three methods, tried in order until one works, and the result says which:

1. ``torch.fx.symbolic_trace``: ``call_module`` nodes on ``nn.Linear``/``nn.LSTM``/``nn.GRU``/
   ``nn.RNN`` and ``F.linear`` calls whose weight is a ``get_attr`` of a parameter.
2. ``torch.export.export(strict=False)`` with example inputs (models with shape-dependent
   Python control flow that symbolic tracing rejects): ATen ``linear``/``lstm``/``gru``/
   ``rnn_*`` nodes whose weight inputs are lifted parameters, named through the graph
   signature (the same FQNs that ``nn_module_stack`` reports).
3. A module walk: every ``nn.Linear`` and recurrent module (data-dependent control flow), and
   ``nn.MultiheadAttention``'s input projection.

A tracer that finds fewer weights than the module walk (fx treats ``torch.nn`` containers such
as ``nn.TransformerEncoderLayer`` as leaves) gets the walk's extra weights added, and the
result's ``attempts`` says so.

Each weight matrix becomes one :class:`Target`. Recurrent layers contribute every
``weight_ih_l{k}[_reverse]`` and ``weight_hh_l{k}[_reverse]`` (and ``weight_hr`` with a
projection) with the row range of every gate. A parameter reachable under several names
(tied weights) is one target with ``aliases``; it is compressed once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Target", "CaptureResult", "capture", "RECURRENT_GATES"]

#: Gate order of the stacked recurrent weights, as PyTorch lays them out.
RECURRENT_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn": ("h",)}
_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?$")


@dataclass(frozen=True)
class Target:
    """One weight matrix to compress.

    ``name`` is the parameter's qualified name (``rnn.weight_hh_l0``); ``kind`` is ``linear``,
    ``functional`` (a parameter used by ``F.linear`` outside an ``nn.Linear``), ``lstm``,
    ``gru`` or ``rnn``; ``gates`` holds ``(gate, first_row, end_row)`` for stacked recurrent
    weights; ``aliases`` are other names of the same (tied) parameter.
    """

    name: str
    module_path: str
    param_name: str
    kind: str
    shape: tuple[int, int]
    gates: tuple[tuple[str, int, int], ...] = ()
    aliases: tuple[str, ...] = ()
    module_classes: tuple[str, ...] = ()

    @property
    def module_class(self) -> str:
        """The owning module's own class name."""
        return self.module_classes[0] if self.module_classes else ""

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def out_features(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class CaptureResult:
    """Targets found, the method that found them, and why earlier methods failed."""

    targets: tuple[Target, ...]
    method: str
    attempts: tuple[tuple[str, str], ...] = field(default=())

    def by_name(self) -> dict[str, Target]:
        return {t.name: t for t in self.targets}


def _kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.RNN):
        return "rnn"
    return None


def _class_names(cls: type) -> tuple[str, ...]:
    """``cls`` and its bases up to (not including) ``nn.Module``, by name."""
    return tuple(c.__name__ for c in cls.__mro__ if issubclass(c, nn.Module) and c is not nn.Module)


def _module_weight_names(path: str, module: nn.Module) -> list[str]:
    """Qualified names of the weight matrices of a Linear or recurrent module."""
    prefix = f"{path}." if path else ""
    if isinstance(module, nn.Linear):
        return [f"{prefix}weight"]
    if isinstance(module, nn.RNNBase):
        return [f"{prefix}{n}" for n in module._flat_weights_names if _RNN_WEIGHT.match(n)]
    if isinstance(module, nn.MultiheadAttention):  # its out_proj is an nn.Linear of its own
        own = ("in_proj_weight",) if module.in_proj_weight is not None else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        return [f"{prefix}{n}" for n in own]
    return []


class _Names:
    """Parameter names of a model, with tied parameters grouped."""

    def __init__(self, model: nn.Module):
        self.model = model
        groups: dict[int, list[str]] = {}
        self.param: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
            self.param[name] = p
        self.group = {name: tuple(names) for names in groups.values() for name in names}


def _build_targets(model: nn.Module, used: list[str]) -> tuple[Target, ...]:
    """Targets from parameter names used as linear/recurrent weights, in first-use order."""
    names = _Names(model)
    seen: set[str] = set()
    targets = []
    for name in used:
        if name not in names.param or name in seen:
            continue
        group = names.group[name]
        seen.update(group)
        p = names.param[name]
        if p.dim() != 2:
            continue
        module_path, _, param_name = name.rpartition(".")
        owner = model.get_submodule(module_path)
        kind = _kind_of(owner) or "functional"
        if kind == "linear" and param_name != "weight":
            kind = "functional"
        gates = ()
        if kind in RECURRENT_GATES and not param_name.startswith("weight_hr"):
            gate_names = RECURRENT_GATES[kind]
            size = p.shape[0] // len(gate_names)
            gates = tuple((g, i * size, (i + 1) * size) for i, g in enumerate(gate_names))
        targets.append(
            Target(name, module_path, param_name, kind, tuple(p.shape), gates, tuple(n for n in group if n != name),
                   _class_names(type(owner)))
        )
    return tuple(targets)


def _capture_fx(model: nn.Module) -> list[str]:
    graph_module = torch.fx.symbolic_trace(model)
    used: list[str] = []
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            used += _module_weight_names(node.target, model.get_submodule(node.target))
        elif node.op == "call_function" and node.target in (F.linear, torch._C._nn.linear):
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
                used.append(weight.target)
    return used


_EXPORT_OPS = {
    "aten.linear.default": "linear",
    "aten.lstm.input": "rnn",
    "aten.gru.input": "rnn",
    "aten.rnn_tanh.input": "rnn",
    "aten.rnn_relu.input": "rnn",
}


def _capture_export(model: nn.Module, example_inputs: tuple) -> list[str]:
    # A failed export logs whole graphs at WARNING and prints them (data-dependent guards) to the
    # standard streams; the reason is recorded in the result instead.
    quiet = logging.getLogger("torch")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.export.export(model, tuple(example_inputs), strict=False)
    finally:
        quiet.setLevel(level)
    to_param = program.graph_signature.inputs_to_parameters
    used: list[str] = []
    for node in program.graph.nodes:
        if node.op != "call_function" or str(node.target) not in _EXPORT_OPS:
            continue
        if _EXPORT_OPS[str(node.target)] == "linear":
            weight = node.args[1]
            if isinstance(weight, torch.fx.Node) and weight.name in to_param:
                used.append(to_param[weight.name])
        else:
            params = node.args[2]  # flat list of the recurrent module's weights and biases
            for p in params:
                fqn = to_param.get(getattr(p, "name", None))
                if fqn and _RNN_WEIGHT.search(fqn):
                    used.append(fqn)
    return used


def _capture_walk(model: nn.Module) -> list[str]:
    used: list[str] = []
    for path, module in model.named_modules():
        used += _module_weight_names(path, module)
    return used


def _summarise(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def capture(
    model: nn.Module,
    example_inputs: tuple | None = None,
    methods: tuple[str, ...] = ("fx", "export", "walk"),
) -> CaptureResult:
    """Find the compressible weight matrices of ``model``; see the module docstring."""
    unknown = [m for m in methods if m not in ("fx", "export", "walk")]
    if unknown:
        raise ValueError(f"unknown capture method(s) {unknown}; allowed: fx, export, walk")
    attempts: list[tuple[str, str]] = []
    for method in methods:
        try:
            if method == "fx":
                used = _capture_fx(model)
            elif method == "export":
                if example_inputs is None:
                    attempts.append((method, "skipped: no example inputs"))
                    continue
                was_training = model.training
                model.eval()
                try:
                    used = _capture_export(model, example_inputs)
                finally:
                    model.train(was_training)
            else:
                used = _capture_walk(model)
        except Exception as exc:  # each tracer fails in its own way; record why and fall back
            attempts.append((method, _summarise(exc)))
            continue
        targets = _build_targets(model, used)
        if method != "walk":
            # fx treats torch.nn containers (nn.TransformerEncoderLayer, nn.MultiheadAttention) as
            # leaves and never sees the Linears inside them: a tracer that finds fewer weights than
            # a plain walk of the modules would silently leave layers dense. Use the larger set.
            seen = {n for t in targets for n in (t.name, *t.aliases)}
            missed = [n for n in _capture_walk(model) if n not in seen]
            if missed:
                targets = _build_targets(model, used + missed)
                attempts.append((method, f"ok; found {len(targets) - len(missed)} weights, a module walk "
                                         f"{len(missed)} more (e.g. {missed[0]}): using them all"))
                return CaptureResult(targets, method, tuple(attempts))
        attempts.append((method, "ok"))
        return CaptureResult(targets, method, tuple(attempts))
    raise RuntimeError(f"no capture method worked: {attempts}")
