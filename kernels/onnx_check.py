"""Export a module with ``torch.onnx.export(..., dynamo=True)`` and compare ONNX Runtime with torch.

Used by the kernel tests and the benchmark: the sparse modules must export as standard ONNX ops
(Gather, MatMul, TopK, ScatterElements, ...; no custom domain) and stock ONNX Runtime
(``CPUExecutionProvider``) must reproduce torch's outputs on fresh random inputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

__all__ = ["OnnxCheck", "OutputCountError", "export_onnx", "flatten_outputs", "max_errors", "ort_errors", "output_names",
           "ort_session", "use_global_ort_threads", "onnx_check"]

_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OnnxCheck:
    """Result of :func:`onnx_check`: worst errors over all trials and outputs, and the graph's ops."""

    max_abs: float
    max_rel: float
    op_types: tuple[str, ...]
    custom_ops: tuple[str, ...]


def export_onnx(module: nn.Module, args: tuple, path: str | os.PathLike, opset: int | None = None,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic_axes: dict[str, dict[int, str]] | None = None) -> str:
    """Export ``module(*args)`` to ``path`` (dynamo exporter; static shapes unless ``dynamic_axes``
    names input dimensions, e.g. ``{"input_ids": {0: "batch", 1: "sequence"}}``); return the path."""
    kwargs = {"dynamo": True, "external_data": False, "verbose": False}
    if opset is not None:
        kwargs["opset_version"] = opset
    for key, value in (("input_names", input_names), ("output_names", output_names), ("dynamic_axes", dynamic_axes)):
        if value:
            kwargs[key] = list(value) if key != "dynamic_axes" else value
    module = module.eval()
    _forget_recurrent_dispatch()
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # "torchvision is not installed" chatter, not about the model
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter, not about the model
            torch.onnx.export(module, tuple(args), str(path), **kwargs)
    finally:
        log.setLevel(level)
    return str(path)


#: ATen recurrent ops that the exporter writes as one ONNX LSTM / GRU / RNN node
_RECURRENT_OPS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _forget_recurrent_dispatch() -> None:
    """Clear the Python dispatch caches of the ATen recurrent ops. A ``torch.export`` earlier in the
    process (capture runs one on models fx cannot trace) leaves cache entries that make the ONNX
    exporter decompose ``aten.lstm`` into one copy of the cell per time step (measured on torch
    2.13: the dense LSTM became 32 unrolled steps, and a dynamic sequence axis failed with "tracing
    inferred a static shape"); with the caches empty it stays one ``LSTM`` node."""
    for name in _RECURRENT_OPS:
        packet = getattr(torch.ops.aten, name)
        for overload in packet.overloads():
            cache = getattr(getattr(packet, overload), "_dispatch_cache", None)  # private: absent in another torch
            if cache:
                cache.clear()


def output_names(outputs, prefix: str = "") -> list[str] | None:
    """Names of :func:`flatten_outputs`'s tensors taken from the mapping keys on the way (a Hugging
    Face ``ModelOutput`` gives ``last_hidden_state``, ``pooler_output``); None when the outputs hold
    no mapping (the exporter's own names then)."""
    if isinstance(outputs, torch.Tensor):
        return [prefix or "output"]
    if isinstance(outputs, Mapping):
        items = list(outputs.items())
    elif isinstance(outputs, (list, tuple)):
        items = [(str(i), o) for i, o in enumerate(outputs)]
    else:
        return []
    names = [n for key, o in items for n in (output_names(o, f"{prefix}.{key}" if prefix else str(key)) or [])]
    if not prefix and not isinstance(outputs, Mapping) and not any(isinstance(o, Mapping) for _, o in items):
        return None
    return names


def ort_session(path: str | os.PathLike, threads: int | None = None, spin: bool = True, shared_pool: bool = False):
    """An ``onnxruntime.InferenceSession`` on the CPU provider (optionally with ``threads`` intra-op threads).

    ``spin=False`` stops the intra-op threads from busy-waiting after each run (ORT's
    ``session.intra_op.allow_spinning``): needed when several sessions with their own thread pools
    share few cores, where one session's spinning threads otherwise slow the next session's run
    several times over (measured on 2 cores: ORT dense median 7.4 ms against a 1.5 ms minimum).
    ``shared_pool=True`` runs the session on the process's global thread pool instead (see
    :func:`use_global_ort_threads`; ``threads`` and ``spin`` are then the pool's business).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: "Removing initializer ... not used" on exported graphs is noise
    if shared_pool:
        opts.use_per_session_threads = False
    else:
        if threads is not None:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def use_global_ort_threads(threads: int) -> None:
    """Give this process one ONNX Runtime intra-op thread pool of ``threads`` threads, shared by the
    sessions made with ``ort_session(..., shared_pool=True)`` (ORT's global thread pool, spinning
    as by default). Call it before the process's first ORT session: ORT reads the sizes when it
    creates its environment, once; after it, ORT refuses sessions with their own pools
    (``shared_pool=False``) in this process.

    This is how a benchmark can run several sessions side by side as one deployed model runs:
    one set of threads, spinning between calls, and no idle pool of another session competing
    for the cores.
    """
    import onnxruntime as ort

    ort.set_global_thread_pool_sizes(threads, 1)


def _graph_ops(model) -> tuple[list[str], list[str]]:
    ops, custom = [], []
    graphs = [model.graph] + [f for f in model.functions]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            ops.append(node.op_type)
            if node.domain not in _STANDARD_DOMAINS and not any(node.domain == f.domain for f in model.functions):
                custom.append(f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.type == attr.GRAPH:
                    graphs.append(attr.g)
    return ops, custom


def _fresh(example: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if example.is_floating_point():
        return torch.randn(example.shape, generator=gen, dtype=torch.float64).to(example.dtype)
    return example.clone()


def flatten_outputs(outputs) -> list[torch.Tensor]:
    """The tensors of a model's outputs in the order an ONNX export lists them: a tensor, or nested
    tuples, lists and mappings of them (Hugging Face's ``ModelOutput`` is a mapping: its values
    count, not its keys; iterating it as a sequence recursed through the key strings forever).
    Anything else (None, numbers, strings) is not an output tensor."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in flatten_outputs(o)]
    return []


def max_errors(expected: Sequence, got: Sequence[np.ndarray]) -> tuple[float, float]:
    """Worst absolute error of ``got`` (ORT's outputs) against ``expected`` (torch tensors or arrays),
    and worst error relative to each output's largest magnitude: the one error definition of every
    ONNX check (export, the Hugging Face export, the benchmarks, :func:`onnx_check`)."""
    max_abs = max_rel = 0.0
    for e, o in zip(expected, got):
        e = e.detach().double().numpy() if isinstance(e, torch.Tensor) else np.asarray(e, dtype=np.float64)
        err = np.abs(np.asarray(o).astype(np.float64) - e)
        max_abs = max(max_abs, float(err.max(initial=0.0)))
        max_rel = max(max_rel, float(err.max(initial=0.0) / max(np.abs(e).max(initial=0.0), 1e-30)))
    return max_abs, max_rel


class OutputCountError(RuntimeError):
    """ONNX Runtime returned another number of outputs than torch."""


def ort_errors(session, inputs: Sequence[Sequence[torch.Tensor]], expected: Sequence[Sequence]) -> tuple[float, float]:
    """Run ``session`` on every input tuple of ``inputs`` (fed to the graph's inputs in order) and
    return the worst errors against ``expected`` (one sequence of outputs per input tuple) as
    :func:`max_errors` defines them: the one harness of every ONNX check (:func:`onnx_check`, the
    export's verification, the benchmarks' session checks).
    Raises :class:`OutputCountError` when ORT returns another number of outputs than expected."""
    names = [i.name for i in session.get_inputs()]
    worst_abs = worst_rel = 0.0
    for x, want in zip(inputs, expected, strict=True):
        got = session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})
        if len(got) != len(want):
            raise OutputCountError(f"ONNX Runtime returned {len(got)} outputs, torch {len(want)}")
        a, r = max_errors(want, got)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
    return worst_abs, worst_rel


def onnx_check(module: nn.Module, example_inputs: Sequence[torch.Tensor], *, trials: int = 2, seed: int = 0,
               opset: int | None = None) -> OnnxCheck:
    """Export ``module`` to a temporary file, run ORT on ``trials`` fresh random inputs of the
    example shapes/dtypes, and return the worst max-abs / max-rel error against torch.

    Errors as :func:`max_errors` defines them (relative: to each output's largest magnitude).
    """
    import onnx

    example_inputs = tuple(example_inputs)
    gen = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="onnx_check_") as tmp:
        path = export_onnx(module, example_inputs, os.path.join(tmp, "model.onnx"), opset)
        ops, custom = _graph_ops(onnx.load(path))
        inputs = [tuple(_fresh(x, gen) for x in example_inputs) for _ in range(trials)]
        with torch.no_grad():
            expected = [flatten_outputs(module(*x)) for x in inputs]
        max_abs, max_rel = ort_errors(ort_session(path), inputs, expected)
    return OnnxCheck(max_abs, max_rel, tuple(sorted(set(ops))), tuple(sorted(set(custom))))
