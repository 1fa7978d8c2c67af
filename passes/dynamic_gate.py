"""Dynamic block gating: per input, skip a fixed fraction of weight blocks chosen by a gate network.

Hadifar, Deleu, Develder, Demeester, "Block-wise Dynamic Sparseness" (arXiv 2001.04686; docs/methods.md
section 2). Every targeted weight matrix ``W (out, in)`` is cut into ``block`` blocks (``K`` in all)
and gets its own gate network reading the layer's input: an ``nn.Linear`` target becomes a
:class:`~compressor.kernels.GatedLinear` (a ``GatedBlockLinear``); an ``nn.LSTM`` / ``nn.GRU`` becomes
a :class:`~compressor.kernels.GatedLSTM` / ``GatedGRU`` whose ``W_ih`` is gated from ``x_t`` and
``W_hh`` from ``h_{t-1}``. Per example the top ``ceil(keep * K)`` blocks are kept (``mode: global``,
the paper) or ``ceil(keep * Ci)`` in every block row (``mode: row``), and the kept scores are rescaled
to average 1 over all K blocks, ``g = s_kept / (sum(s_kept) / K)``.

- ``score``: the positive block score; ``softplus`` of the gate's logits (raw scores can be negative,
  which makes the rescaling unstable; softplus is what the kernels implement).
- ``rank``: 0 for the paper's full gate ``Linear(in, K)`` (``in*K`` multiply-adds per example), or a
  bottleneck ``Linear(in, r) -> Linear(r, K)`` (``in*r + r*K``), which matters for small blocks.
- ``init``: ``random`` (default) is the paper's random gate with unscaled weights (an unbiased,
  dropout-like start); ``norm`` starts every input on the largest-norm blocks with weights scaled by
  ``n_kept / K``, so step 0 computes exactly static magnitude block pruning. Measured on the built-in
  LM before training (keep 0.5, 64x64 blocks): perplexity 15.5 (random) vs 65.7 (norm), dense 3.26.

The modules are replaced BEFORE training (DDP sees a fixed structure), then gates and weights train
jointly with the task through :func:`~compressor.training.fine_tune` (plain backprop through the kept
gate values; no straight-through estimator, no auxiliary loss). Inference uses the same hard top-k.
The replacement is recorded as ``structural`` so :func:`compressor.load` rebuilds the gated modules
(fresh, right shapes) before it loads their saved parameters. After training the pass measures how
often each block is kept on ``calibration_batches`` task batches (the report's heat map), the compute
per example (kept blocks + gate) and the batch-1 latency: a streaming step for recurrent layers, one
forward for Linear, against the same layer dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn

from compressor.calibration import call_model

from ..timing import time_interleaved
from ..config import check_block, check_range
from ..errors import RecipeError
from ..kernels import GatedBlockLinear, GatedGRU, GatedLSTM, SparseGRU, SparseLSTM, kept_blocks, select_blocks
from ..kernels.gated_ops import gate_values
from ..kernels.native import cpu_inference_path
from ..patterns import Gated
from ..swaps import GateOptions, Replacement, ReplacementKind, build_gated, set_module
from ..training import TrainConfig, TrainHooks, fine_tune
from .registry import LayerUpdate, PassConfig, PassResult, register_pass

if TYPE_CHECKING:
    from ..capture import Target
    from ..pipeline import CompressionState

__all__ = ["DynamicGateConfig", "dynamic_gate", "check_gate_shape"]


@dataclass(frozen=True)
class DynamicGateConfig(PassConfig):
    """``block``: [h, w]; ``keep``: kept fraction of blocks in (0, 1]; ``mode``: ``global`` | ``row``;
    ``score``: ``softplus``; ``rank``: 0 (full gate) or the bottleneck width; ``init``: ``random`` |
    ``norm``; ``calibration_batches``: task batches for the keep-frequency map (0: none);
    ``latency_repeats``: timing rounds of the batch-1 step (0: not measured)."""

    block: tuple[int, int] = (64, 64)
    keep: float = 0.5
    mode: Literal["global", "row"] = "global"
    score: Literal["softplus"] = "softplus"
    rank: int = 0
    init: Literal["norm", "random"] = "random"
    calibration_batches: int = 4
    latency_repeats: int = 50
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, path: str) -> None:
        check_range(f"{path}.keep", self.keep, 0.0, 1.0, low_open=True, high_open=False)
        check_block(f"{path}.block", self.block)
        for key in ("rank", "calibration_batches", "latency_repeats"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be >= 0")


def check_gate_shape(shape: tuple[int, int], config: DynamicGateConfig, path: str, name: str) -> tuple[int, int]:
    """``(n_kept, K)`` for one weight; a RecipeError when the block grid leaves nothing to choose.

    Degenerate (refused): ``global`` mode with fewer than 2 blocks in the whole matrix; ``row`` mode
    with fewer than 2 blocks in a block row (each row must be able to drop one); a ``keep`` < 1 that
    still keeps every block (``ceil(keep * n) == n``).
    """
    h, w = config.block
    Ro, Ci = -(-shape[0] // h), -(-shape[1] // w)
    n = Ro * Ci if config.mode == "global" else Ci
    if n < 2:
        where = "in the whole matrix" if config.mode == "global" else "per block row"
        raise RecipeError(f"{path}.block", f"{list(config.block)} leaves {n} block {where} of {name} "
                          f"{list(shape)}; a gate needs at least 2 to choose from: use a smaller block")
    k = kept_blocks(config.keep, (Ro, Ci), config.mode)
    if config.keep < 1.0 and k == n:
        raise RecipeError(f"{path}.keep", f"{config.keep} keeps all {n} blocks {'' if config.mode == 'global' else 'per row '}"
                          f"of {name} {list(shape)} (ceil(keep * {n}) = {n}); use a smaller keep or block")
    return (k if config.mode == "global" else k * Ro), Ro * Ci


def _plan(state, config: DynamicGateConfig, targets, path: str) -> dict[str, list]:
    """Group targets by module, checking every one before anything changes."""
    groups: dict[str, list] = {}
    for t in targets:
        module = state.model.get_submodule(t.module_path)
        if t.aliases:
            raise RecipeError(f"{path}.targets", f"{t.name} is tied to {', '.join(t.aliases)}; a gated module "
                              "cannot share its weight: add it to ignore")
        if not isinstance(module, (nn.Linear, nn.LSTM, nn.GRU, GatedBlockLinear, GatedLSTM, GatedGRU)):
            raise RecipeError(f"{path}.targets", f"{t.name} lives in a {type(module).__name__}; a gate needs the "
                              "layer's input, so only nn.Linear, nn.LSTM and nn.GRU modules can be gated")
        if getattr(module, "proj_size", 0):
            raise RecipeError(f"{path}.targets", f"{t.module_path} has proj_size={module.proj_size}; not supported")
        if state.mask(t) is not None:
            raise RecipeError(f"{path}.targets", f"{t.name} already has a mask; run dynamic_gate on dense layers "
                              "(before any pruning pass)")
        check_gate_shape(t.shape, config, path, t.name)
        groups.setdefault(t.module_path, []).append(t)
    return groups


def _options(config: DynamicGateConfig, weights: list[str]) -> GateOptions:
    return GateOptions(block=config.block, keep=config.keep, mode=config.mode, rank=config.rank, init=config.init,
                       seed=config.seed, weights=tuple(weights))


def _gated_modules(model: nn.Module, path: str, targets) -> dict[str, GatedBlockLinear]:
    """Target name -> its GatedBlockLinear inside the (replaced) module at ``path``."""
    module = model.get_submodule(path)
    if isinstance(module, GatedBlockLinear):
        return {t.name: module for t in targets}
    gated = module.gated()
    return {t.name: gated[t.param_name] for t in targets}


@torch.no_grad()
def keep_frequency(model: nn.Module, mods: dict[str, GatedBlockLinear], task, batches: int) -> dict[str, list]:
    """How often each block was kept, ``(Ro, Ci)`` fractions, over ``batches`` held-out task batches."""
    counts = {n: torch.zeros(m.grid[0] * m.grid[1], dtype=torch.float64) for n, m in mods.items()}
    seen = dict.fromkeys(mods, 0)
    handles = []
    for name, mod in mods.items():
        def hook(gate, inputs, out, name=name, mod=mod):
            idx, _ = select_blocks(gate_values(out.reshape(-1, out.shape[-1])), mod.k, mod.grid, mod.mode)
            counts[name] += torch.bincount(idx.reshape(-1), minlength=counts[name].numel()).double()
            seen[name] += idx.shape[0]
        handles.append(mod.gate.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for i in range(batches):
            call_model(model, task.inputs(task.batch(20_000_000 + i)))  # positional, or keyword (text task)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: (counts[n] / max(1, seen[n])).view(*m.grid).round(decimals=4).tolist() for n, m in mods.items()}


@torch.no_grad()
def step_latency(module: nn.Module, repeats: int) -> dict[str, float]:
    """Batch-1 median latency (ms) of the gated module vs the same weights dense, gate included.

    Recurrent modules: one streaming ``step`` through all layers (dense: ``SparseLSTM`` with plain
    ``nn.Linear`` projections, like ``LSTMCell``); Linear: one forward of a single example.
    """
    copies = 4
    module = module.eval()
    if isinstance(module, (GatedLSTM, GatedGRU)):
        dense = (SparseLSTM if isinstance(module, GatedLSTM) else SparseGRU).from_dense(module.to_dense(), {}).eval()
        xs = [torch.randn(1, module.input_size, dtype=next(module.parameters()).dtype) for _ in range(copies)]
        fns = {"dense": lambda r: dense.step(xs[r % copies]), "gated": lambda r: module.step(xs[r % copies])}
    else:
        w, b = module.to_dense_weight().clone(), None if module.bias is None else module.bias.detach()
        xs = [torch.randn(1, module.in_features, dtype=w.dtype) for _ in range(copies)]
        fns = {"dense": lambda r: torch.nn.functional.linear(xs[r % copies], w, b), "gated": lambda r: module(xs[r % copies])}
    t = time_interleaved(fns, repeats=repeats)
    dense_ms, gated_ms = t["dense"]["median_s"] * 1e3, t["gated"]["median_s"] * 1e3
    return {"dense_ms": dense_ms, "gated_ms": gated_ms, "speedup": dense_ms / gated_ms}


@register_pass("dynamic_gate", DynamicGateConfig, kinds=("linear", "lstm", "gru"), trains=True)
def dynamic_gate(state: CompressionState, config: DynamicGateConfig, targets: list[Target]) -> PassResult:
    """Insert a gate network per weight matrix (Hadifar et al.) and train gates and weights jointly."""
    path = f"passes[{state.pass_index}]"
    result = PassResult()
    groups = _plan(state, config, targets, path)
    # 1. replace modules before training (a resumed run already has them: the checkpoint replays them)
    for module_path, group in groups.items():
        module = state.model.get_submodule(module_path)
        if isinstance(module, (GatedBlockLinear, GatedLSTM, GatedGRU)):
            continue
        kind = (ReplacementKind.GATED_LINEAR if isinstance(module, nn.Linear) else
                ReplacementKind.GATED_LSTM if isinstance(module, nn.LSTM) else ReplacementKind.GATED_GRU)
        options = _options(config, [t.param_name for t in group])
        set_module(state.model, module_path, build_gated(module, options).train(module.training))
        state.replacements.append(Replacement(module_path, kind, options))
    # 2. train gates and weights jointly with the task
    history = fine_tune(state, config.train, TrainHooks(), "dynamic_gate")
    # 3. measure: keep frequency, compute, batch-1 latency
    task = state.task(config.train.task)
    pattern = Gated(config.block[0], config.block[1], config.keep, config.mode, config.rank)
    result.metrics = {"history": history, "latency": {}, "compute": {}}
    for module_path, group in groups.items():
        mods = _gated_modules(state.model, module_path, group)
        freq = keep_frequency(state.model, mods, task, config.calibration_batches) if config.calibration_batches else {}
        gated = state.model.get_submodule(module_path)
        # a bidirectional layer has no streaming step to time (asking for one failed after the training)
        bidirectional = bool(getattr(gated, "bidirectional", False))
        lat = step_latency(gated, config.latency_repeats) if config.latency_repeats and not bidirectional else None
        if lat is not None:
            result.metrics["latency"][module_path] = {k: round(v, 4) for k, v in lat.items()}
        for t in group:
            n_kept, K = check_gate_shape(t.shape, config, path, t.name)
            flops = pattern.flops(t.shape)
            result.metrics["compute"][t.name] = {"dense_flops": 2 * t.shape[0] * t.shape[1], "gated_flops": flops,
                                                 "gate_flops": 2 * pattern.gate_macs(t.shape), "kept_blocks": n_kept,
                                                 "blocks": K}
            notes = [f"per example keeps {n_kept}/{K} blocks; FLOPs incl. gate {flops / (2 * t.shape[0] * t.shape[1]):.1%} "
                     f"of dense (gate {pattern.gate_macs(t.shape) / (t.shape[0] * t.shape[1]):.1%})"]
            if pattern.gate_macs(t.shape) >= t.shape[0] * t.shape[1]:
                notes.append(f"the gate costs {pattern.gate_macs(t.shape) / (t.shape[0] * t.shape[1]):.0%} of the dense "
                             "layer: gating it saves no compute (use larger blocks, rank > 0, or ignore this layer)")
            if bidirectional and config.latency_repeats:
                notes.append("batch-1 latency not measured: a bidirectional layer has no streaming step")
            if lat is not None:
                what = "streaming step (all layers)" if t.kind != "linear" else "forward"
                slower = "; SLOWER than dense at this size: per-op overhead outweighs the skipped blocks" \
                    if lat["speedup"] < 1 else ""
                notes.append(f"batch-1 {what}: gated {lat['gated_ms']:.3f} ms vs dense {lat['dense_ms']:.3f} ms "
                             f"({lat['speedup']:.2f}x, gate included{slower})")
            cpu_path = cpu_inference_path(mods[t.name])
            # the row's FLOPs are the gated layer's (kept blocks and gate), not those of its non-zeros
            result.layers[t.name] = LayerUpdate(pattern, 0.0, kernel=f"gated blocks ({cpu_path})",
                                                speedup=round(lat["speedup"], 3) if lat is not None else None,
                                                notes=notes, compressed_flops=flops,
                                                block_keep_frequency=freq.get(t.name))
    return result
