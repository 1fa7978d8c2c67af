"""Swap in sparse kernel modules where they are really faster, and say so per layer.

For every selected layer whose pattern has a kernel (block and balanced block -> 
:class:`~compressor.kernels.BlockSparseLinear`, N:M -> :class:`~compressor.kernels.NMLinear`,
block-pruned ``nn.LSTM``/``nn.GRU`` -> :class:`~compressor.kernels.SparseLSTM`/``SparseGRU``) the
pass builds the sparse module, times it against the dense module on the layer's own shape
(interleaved round by round, rotating inputs, ``repeats`` rounds) and decides on the paired
per-round ratios dense / sparse (:func:`speedup_decision`): their median is the speed-up, and a
seeded bootstrap of that median gives a 95% interval. The kernel is installed only when the
interval's lower end clears ``min_speedup``, declined when its upper end is below it, and
otherwise left dense as "too close to call": one rerun must not flip a decision that rests on
noise (a rounded 1.049 once read "1.05x < 1.05x"). Every decision, with the ratio and its
interval, goes to the report, and the machine's load average (``os.getloadavg``, before and after
measuring) to the pass metrics; ``force: true`` installs regardless (the report still shows the
measured ratio).

``measure``: recurrent modules are timed on what the model calls (``forward``: a sequence of
``seq_len`` steps at ``batch``) or on one streaming ``step``. ``backend`` (a
:class:`~compressor.kernels.backends.Backend`, set on the installed modules and recorded with each
replacement): ``torch`` (CPU reference kernels, also on GPU), ``triton`` (GPU kernels), ``native``
(the compiled CPU kernels where a module has one, torch ops elsewhere; refused where the library
cannot be built), ``auto`` (recorded as triton on CUDA when available, torch otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import masks as masklib
from ..timing import paired_ratio, time_interleaved
from ..errors import CompressorError, RecipeError
from ..patterns import NM, Block
from ..swaps import (Backend, BlockKernelOptions, NMKernelOptions, Replacement, ReplacementKind, build_replacement,
                     set_module)
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["SwapKernelsConfig", "swap_kernels", "speedup_decision"]


@dataclass(frozen=True)
class SwapKernelsConfig(PassConfig):
    """Where and when to install sparse kernels (see the module docstring)."""

    backend: Backend = Backend.AUTO
    batch: int = 1
    seq_len: int = 32
    measure: Literal["forward", "step"] = "forward"
    min_speedup: float = 1.05
    repeats: int = 40
    force: bool = False

    def validate(self, path: str) -> None:
        for key in ("batch", "seq_len", "repeats"):
            if getattr(self, key) < 1:
                raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be >= 1")
        if self.min_speedup <= 0:
            raise RecipeError(f"{path}.min_speedup", f"{self.min_speedup} is invalid; must be > 0")


def speedup_decision(dense_s, sparse_s, min_speedup: float, confidence: float = 0.95, resamples: int = 2000,
                     seed: int = 0) -> dict:
    """Decide a swap from paired timings: ``dense_s[r]`` and ``sparse_s[r]`` were measured in the same round.

    The speed-up and its interval come from :func:`compressor.timing.paired_ratio` (the median of the
    per-round ratios ``dense / sparse``, pairing cancels load that drifts between rounds, and a seeded
    bootstrap ``confidence`` interval ``[low, high]``). ``decision``: ``install`` when
    ``low >= min_speedup``, ``decline`` when ``high < min_speedup``, ``too close`` otherwise.
    """
    d = paired_ratio(dense_s, sparse_s, confidence, resamples, seed)
    d["decision"] = "install" if d["low"] >= min_speedup else ("decline" if d["high"] < min_speedup else "too close")
    return d


def _figures(d: dict) -> str:
    return f"{d['speedup']:.3f}x, {d['confidence']:.0%} interval {d['low']:.3f}-{d['high']:.3f}x over {d['repeats']} rounds"


def _label(kind: ReplacementKind, d: dict, config: SwapKernelsConfig, install: bool) -> str:
    """The report's kernel column for one decision: the installed kind, or why the layer stayed dense."""
    figures = _figures(d)
    if install:
        return kind.value
    if d["decision"] == "decline":
        return f"dense (declined {kind}: {figures}, below {config.min_speedup}x)"
    return f"dense (too close to call for {kind}: {figures}, spans {config.min_speedup}x)"


def _machine_load() -> dict:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not available on this platform
        return {}
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2)}


def _backend(config: SwapKernelsConfig) -> Backend:
    """The backend the installed modules run and their records name: ``torch``, ``triton`` or
    ``native`` (a clear error if the one asked for cannot run here).

    ``triton`` needs the ``triton`` package and a CUDA device, or ``TRITON_INTERPRET=1`` (the Triton
    interpreter on CPU); ``native`` needs the compiled CPU library (a C compiler, not
    ``COMPRESSOR_NATIVE=0``). ``auto`` is ``triton`` where CUDA and triton are present, else ``torch``
    (as recorded before ``native`` had a name; recurrent modules take the compiled kernels under
    ``torch`` too, see :class:`~compressor.kernels.backends.Backend`).
    """
    from ..kernels import native
    from ..kernels.triton_common import triton_importable, triton_unavailable_reason

    if config.backend == Backend.TORCH:
        return Backend.TORCH
    if config.backend == Backend.TRITON:
        reason = triton_unavailable_reason()
        if reason is not None:
            raise CompressorError(f"swap_kernels backend 'triton' cannot run here: {reason}; use backend: torch "
                                  f"or auto")
        return Backend.TRITON
    if config.backend == Backend.NATIVE:
        reason = native.unavailable_reason()
        if reason is not None:
            raise CompressorError(f"swap_kernels backend 'native' cannot run here: {reason}; use backend: torch "
                                  f"or auto")
        return Backend.NATIVE
    return Backend.TRITON if torch.cuda.is_available() and triton_importable() else Backend.TORCH


def _plan(state, module_path: str, targets, backend: Backend) -> tuple[Replacement | None, str]:
    """(the replacement, or None and the reason) for one module and its targets."""
    module = state.model.get_submodule(module_path)
    patterns = {t.name: state.layers[t.name].pattern for t in targets}
    tied = [t for t in targets if t.aliases]
    if tied:
        t = tied[0]
        zeros = float((state.weight(t) == 0).float().mean())
        return None, (f"{t.name} is tied to {', '.join(t.aliases)}: a kernel module would untie the shared "
                      f"tensor, so it stays in dense storage, {zeros:.1%} zeros under every name")
    if isinstance(module, nn.Linear):
        p = patterns[targets[0].name]
        if isinstance(p, Block):
            options = BlockKernelOptions(block=(p.h, p.w), backend=backend)
            return Replacement(module_path, ReplacementKind.BLOCK_SPARSE_LINEAR, options), ""
        if isinstance(p, NM):
            return Replacement(module_path, ReplacementKind.NM_LINEAR, NMKernelOptions(p.n, p.m, backend)), ""
        return None, f"no sparse kernel for pattern '{p.describe()}'"
    if isinstance(module, (nn.LSTM, nn.GRU)) and not getattr(module, "proj_size", 0):
        blocks = {(p.h, p.w) for p in patterns.values() if isinstance(p, Block)}
        others = [p.describe() for p in patterns.values() if not isinstance(p, Block) and p.kind != "dense"]
        if others or len(blocks) != 1:
            return None, "recurrent kernels need every pruned weight in one block pattern"
        kind = ReplacementKind.SPARSE_LSTM if isinstance(module, nn.LSTM) else ReplacementKind.SPARSE_GRU
        return Replacement(module_path, kind, BlockKernelOptions(block=blocks.pop(), backend=backend)), ""
    return None, f"no sparse kernel for {type(module).__name__}"


def _timers(dense: nn.Module, sparse: nn.Module, config: SwapKernelsConfig, recurrent: bool):
    copies = 4
    p = next(dense.parameters())
    like = {"dtype": p.dtype, "device": p.device}  # time on the layer's own device and dtype
    sync = torch.cuda.synchronize if p.is_cuda else (lambda: None)

    def timed(fn):
        def run(r):
            fn(r)
            sync()
        return run

    if not recurrent:
        w, b = dense.weight.detach(), None if dense.bias is None else dense.bias.detach()
        xs = [torch.randn(config.batch, dense.in_features, **like) for _ in range(copies)]
        return {"dense": timed(lambda r: F.linear(xs[r % copies], w, b)), "sparse": timed(lambda r: sparse(xs[r % copies]))}
    if config.measure == "step":
        baseline = type(sparse).from_dense(dense, {})  # dense projections, one step at a time (like LSTMCell)
        xs = [torch.randn(config.batch, dense.input_size, **like) for _ in range(copies)]
        return {"dense": timed(lambda r: baseline.step(xs[r % copies])), "sparse": timed(lambda r: sparse.step(xs[r % copies]))}
    shape = (config.batch, config.seq_len, dense.input_size) if dense.batch_first else (config.seq_len, config.batch, dense.input_size)
    xs = [torch.randn(shape, **like) for _ in range(copies)]
    return {"dense": timed(lambda r: dense(xs[r % copies])), "sparse": timed(lambda r: sparse(xs[r % copies]))}


@register_pass("swap_kernels", SwapKernelsConfig, kinds=("linear", "lstm", "gru"))
@torch.no_grad()
def swap_kernels(state: CompressionState, config: SwapKernelsConfig, targets: list[Target]) -> PassResult:
    """Install sparse kernel modules where measured faster; report every decision."""
    backend = _backend(config)
    result = PassResult()
    load_before = _machine_load()
    by_module: dict[str, list] = {}
    for t in targets:
        if state.layers[t.name].pattern.kind != "dense":
            by_module.setdefault(t.module_path, []).append(t)
    for t in targets:
        if t.module_path not in by_module:
            result.skipped[t.name] = "dense layer: nothing to swap"
    for module_path, group in by_module.items():
        rep, reason = _plan(state, module_path, group, backend)
        if rep is None:
            for t in group:
                result.layers[t.name] = LayerUpdate(kernel=f"dense ({reason})")
            continue
        module = state.model.get_submodule(module_path)
        was_training = module.training
        module.eval()
        baked = masklib.finalize(module)  # dense module with zeros where pruned; masks kept below
        kind = rep.kind
        sparse = build_replacement(module, rep, baked).eval()
        recurrent = kind in (ReplacementKind.SPARSE_LSTM, ReplacementKind.SPARSE_GRU)
        timing = time_interleaved(_timers(module, sparse, config, recurrent), repeats=config.repeats)
        decision = speedup_decision(timing["dense"]["samples_s"], timing["sparse"]["samples_s"], config.min_speedup)
        install = config.force or decision["decision"] == "install"
        if install:
            set_module(state.model, module_path, sparse.train(was_training))
            state.replacements.append(rep)
            for name, mask in baked.items():
                state.baked_masks[f"{module_path}.{name}"] = mask
        else:
            for name, mask in baked.items():  # keep the masks as they were
                masklib.set_mask(module, name, mask)
            module.train(was_training)
        label = _label(kind, decision, config, install)
        notes = []
        if install and decision["decision"] != "install":
            verdict = "declined" if decision["decision"] == "decline" else "too close to call"
            notes.append(f"force: {kind} installed although the measurement says {verdict} "
                         f"({_figures(decision)}, min_speedup {config.min_speedup}x)")
        for t in group:
            result.layers[t.name] = LayerUpdate(kernel=label, speedup=round(decision["speedup"], 3), notes=notes)
        result.metrics[module_path] = {"kind": kind.value, "backend": backend.value, "installed": install, "decision": decision["decision"],
                                       "speedup": decision["speedup"], "speedup_low": decision["low"],
                                       "speedup_high": decision["high"], "speedup_iqr": decision["iqr"],
                                       "repeats": decision["repeats"],
                                       "dense_ms": timing["dense"]["median_s"] * 1e3,
                                       "sparse_ms": timing["sparse"]["median_s"] * 1e3}
    load = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "before": load_before,
            "after": _machine_load()}
    result.metrics["machine_load"] = load
    if load_before and max(load_before["load_1m"], load["after"].get("load_1m", 0)) > (os.cpu_count() or 1):
        result.notes.append(f"the machine was busy while timing (1-minute load average {load_before['load_1m']} -> "
                            f"{load['after'].get('load_1m')} on {os.cpu_count()} cores): the intervals are wide")
    return result
