"""Calibration inputs of each weight matrix, recorded from a model with forward hooks.

Layer-wise reconstruction (Hubara et al.'s AdaPrune) needs, for a weight W, the inputs X it
multiplies. For an ``nn.Linear`` that is the module's input. For stacked recurrent layers a
hook only sees the whole module's input, so the per-layer inputs are recomputed: layer k's
``weight_ih`` multiplies its input sequence (the model input, or layer k-1's outputs) and
``weight_hh`` multiplies the previous hidden state h_{t-1} (h_{t+1} for the reverse direction).

Memory stays bounded: inputs are collected for one module at a time and capped at ``rows``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn

from .errors import CompressorError, first_line
from .tasks import BatchStream

__all__ = ["module_inputs", "rnn_layer_inputs", "call_model", "task_batches", "Stage", "SequentialRecorder"]


def call_model(model: nn.Module, inputs):
    """``model(**inputs)`` for a mapping of keyword inputs (a Hugging Face model's ``input_ids`` and
    ``attention_mask``), else ``model(*inputs)``: what a task's ``inputs(batch)`` returns."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)




def task_batches(task) -> Iterator:
    """A task's model inputs for calibration, batch after batch (the same batches on every call):
    a tuple of positional inputs, or a mapping of keyword inputs (kept a mapping, so a Hugging Face
    model gets ``input_ids=`` and ``attention_mask=``). A task that runs out of data (``StopIteration``)
    ends them."""
    step = 0
    while True:
        try:
            batch = task.batch(BatchStream.CALIBRATION + step)
        except StopIteration:  # inside a generator it would become "RuntimeError: generator raised StopIteration"
            return
        inputs = task.inputs(batch)
        yield inputs if isinstance(inputs, Mapping) else tuple(inputs)
        step += 1


@torch.no_grad()
def rnn_layer_inputs(rnn: nn.RNNBase, x: torch.Tensor, layers: int | None = None) -> dict[str, torch.Tensor]:
    """Rows multiplied by each ``weight_ih/hh_l{k}[_reverse]`` of ``rnn`` for input ``x``: {name: (N, in)}.

    ``layers``: only the first ``layers`` layers (the later ones are not run)."""
    if getattr(rnn, "proj_size", 0):
        raise CompressorError("calibration of LSTMs with proj_size is not supported")
    if not rnn.batch_first:
        x = x.transpose(0, 1)  # (B, T, in)
    dirs = 2 if rnn.bidirectional else 1
    H = rnn.hidden_size
    out: dict[str, torch.Tensor] = {}
    seq = x
    for k in range(rnn.num_layers if layers is None else min(layers, rnn.num_layers)):
        single = type(rnn)(seq.shape[-1], H, 1, bias=rnn.bias, batch_first=True, bidirectional=rnn.bidirectional,
                           **({"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}))
        for d in range(dirs):
            sfx = "_reverse" if d else ""
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if hasattr(single, f"{kind}_l0{sfx}"):
                    getattr(single, f"{kind}_l0{sfx}").copy_(getattr(rnn, f"{kind}_l{k}{sfx}"))
        y, _ = single(seq)  # (B, T, dirs*H)
        for d in range(dirs):
            sfx = "_reverse" if d else ""
            h = y[..., d * H:(d + 1) * H]
            zero = torch.zeros_like(h[:, :1])
            prev = torch.cat([zero, h[:, :-1]], 1) if d == 0 else torch.cat([h[:, 1:], zero], 1)
            out[f"weight_ih_l{k}{sfx}"] = seq.reshape(-1, seq.shape[-1])
            out[f"weight_hh_l{k}{sfx}"] = prev.reshape(-1, H)
        seq = y
    return out


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1, t.shape[-1])


#: Consecutive calibration batches that add no rows before collection stops with an error.
_EMPTY_BATCHES = 8


class _Reached(Exception):
    """Stops a calibration forward once the recorded module has seen its input."""


@torch.no_grad()
def module_inputs(model: nn.Module, module_path: str, batches: Iterator, rows: int, layers: int | None = None,
                  stop_at_recurrent: bool = False) -> dict[str, torch.Tensor]:
    """Run ``model`` on calibration batches and collect the inputs of every weight of one module.

    A batch is the model's positional inputs (a tuple) or its keyword inputs (a mapping).
    An ``nn.Linear`` records every call's input. A recurrent module's per-layer inputs (``W_ih``: x_t
    or the previous layer's outputs, ``W_hh``: h_{t-1}) are recomputed from its input sequence
    (:func:`rnn_layer_inputs`, the first ``layers`` layers); with ``stop_at_recurrent`` the forward
    stops at its first call, so the rest of the model is not run (the one-shot passes).

    Returns ``{parameter name: (N, in_features)}`` with at most ``rows`` rows each.
    """
    module = model.get_submodule(module_path)
    recurrent = isinstance(module, nn.RNNBase)
    captured: list[torch.Tensor] = []

    def hook(mod, args):
        captured.append(args[0].detach())
        if recurrent and stop_at_recurrent:
            raise _Reached

    handle = module.register_forward_pre_hook(hook)
    collected: dict[str, list[torch.Tensor]] = {}
    count = 0
    empty_in_a_row = 0
    try:
        for inputs in batches:
            captured.clear()
            before = count
            try:
                call_model(model, inputs)
            except _Reached:
                pass
            except Exception as exc:
                raise CompressorError(
                    f"a calibration batch does not fit the model ({first_line(exc)})"
                ) from None
            for x in captured:
                parts = rnn_layer_inputs(module, x, layers) if recurrent else {"weight": _rows(x)}
                for name, r in parts.items():
                    collected.setdefault(name, []).append(r)
                count += next(iter(parts.values())).shape[0]
            if count >= rows:
                break
            empty_in_a_row = empty_in_a_row + 1 if count == before else 0
            if empty_in_a_row >= _EMPTY_BATCHES:  # an endless task would otherwise never fill `rows`
                why = ("the calibration batches never call it" if not captured
                       else "the calibration task yields empty batches")
                raise CompressorError(f"no calibration rows reached {module_path!r} in {_EMPTY_BATCHES} batches in a row "
                                      f"({count} of the {rows} rows wanted so far): {why}")
    finally:
        handle.remove()
    if not collected:
        raise CompressorError(f"no calibration data reached {module_path!r}: the calibration batches never call it")
    return {name: torch.cat(parts)[:rows] for name, parts in collected.items()}


def _parts(module: nn.Module, x: torch.Tensor, layers: int | None) -> dict[str, torch.Tensor]:
    """The rows each weight of ``module`` multiplies, given the module's input ``x``."""
    return rnn_layer_inputs(module, x, layers) if isinstance(module, nn.RNNBase) else {"weight": _rows(x)}


def _capped(parts: list[dict[str, torch.Tensor]], rows: int) -> dict[str, torch.Tensor]:
    """Concatenate per-call rows by parameter name, at most ``rows`` each."""
    out: dict[str, list[torch.Tensor]] = {}
    for p in parts:
        for name, r in p.items():
            out.setdefault(name, []).append(r)
    return {name: torch.cat(rs)[:rows] for name, rs in out.items()}


class _Replay:
    """Replays a batch stream: every call yields the same batches, pulling from the source only past
    what earlier calls took (a task may run out, or give other batches when asked again)."""

    def __init__(self, source: Iterator):
        self.source, self.seen = source, []

    def __call__(self) -> Iterator:
        i = 0
        while True:
            if i == len(self.seen):
                try:
                    self.seen.append(next(self.source))
                except StopIteration:
                    return
            yield self.seen[i]
            i += 1


class Stage:
    """Weights that share one recording: the weights of one module, or of one layer ``k`` of a
    stacked LSTM/GRU/RNN (``layers = k + 1``: only the first ``layers`` layers' inputs are computed)."""

    __slots__ = ("module_path", "layers")

    def __init__(self, module_path: str, layers: int | None = None):
        self.module_path = module_path
        self.layers = layers

    def __repr__(self) -> str:
        return f"Stage({self.module_path!r}, layers={self.layers})"


def _same(a, b) -> bool:
    """Two block arguments are the same (object, equal tensor, or equal value)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Views of the same memory (both are alive, so equal addresses are the same storage)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


def _first(output):
    """The hidden state a block passes on: its output, or the first element of a tuple/list output."""
    return output[0] if isinstance(output, (tuple, list)) else output


class _Blocks:
    """Calibration activations cached at the input of one block of a stack (a ``ModuleList`` or
    ``nn.Sequential`` of transformer or residual blocks) and carried forward block by block.

    ``inputs[b]`` holds batch b's ``(args, kwargs)`` for block ``at``; :meth:`advance` replaces the
    first argument by the block's output (the model was checked to call its blocks that way)."""

    def __init__(self, model: nn.Module, path: str, batches, rows: int):
        self.path = path
        self.stack = model.get_submodule(path)
        self.at = 0
        self.inputs: list[tuple[tuple, dict]] = []
        first = self.stack[0]

        def hook(mod, args, kwargs):
            self.inputs.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs)))
            raise _Reached

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        count = missed = 0
        try:
            for batch in batches:
                before = len(self.inputs)
                try:
                    call_model(model, batch)
                except _Reached:
                    pass
                except Exception as exc:
                    raise CompressorError(f"a calibration batch does not fit the model ({first_line(exc)})") from None
                if len(self.inputs) == before:
                    missed += 1
                    if missed >= _EMPTY_BATCHES:
                        break
                    continue
                missed = 0
                x = self.inputs[-1][0][0] if self.inputs[-1][0] else None
                count += x.numel() // max(1, x.shape[-1]) if isinstance(x, torch.Tensor) and x.dim() else 1
                if count >= rows:
                    break
        finally:
            handle.remove()
        self.forwards = 0  # block runs so far (the recorder's cost)

    def advance(self, to: int) -> None:
        """Run the cached activations through the blocks before block ``to``."""
        while self.at < to:
            block = self.stack[self.at]
            self.inputs = [((_first(block(*args, **kwargs)).detach(), *args[1:]), kwargs) for args, kwargs in self.inputs]
            self.at += 1
            self.forwards += 1

    def record(self, block: int, modules: dict[str, nn.Module], own: str | None = None) -> dict[str, list[torch.Tensor]]:
        """Run block ``block`` on the cached activations and return every call's input of each of
        ``modules`` ({path: module}) in order: {path: [input, ...]}.

        With ``own`` (one of ``modules``), only its inputs and those of the modules that get the very
        same tensors are wanted: the first batch runs the whole block, which shows them (q, k and v
        take one tensor) and how often each is called; every later batch stops at the first other
        module once those calls are all done (recording q/k/v skips the rest of the block, the
        attention output's the feed-forward). The other modules' lists are then incomplete. This
        assumes a block calls each module as often in every batch as in the first, which the blocks
        of a transformer or recurrent stack do; where the first batch leaves one of ``modules``
        uncalled (a mixture of experts routes tokens by their values), every batch runs whole."""
        self.advance(block)
        seen: dict[str, list[torch.Tensor]] = {p: [] for p in modules}
        wanted: dict[str, int] = {}  # after the first batch: module -> its calls per batch
        counts: dict[str, int] = {}  # this batch's calls of the wanted modules
        first = [True]

        def hook(mod, args, p):
            if own is not None and not first[0]:
                if p not in wanted:
                    if all(counts.get(q, 0) >= n for q, n in wanted.items()):
                        raise _Reached
                else:
                    counts[p] = counts.get(p, 0) + 1
            seen[p].append(args[0].detach())

        handles = [m.register_forward_pre_hook(lambda mod, args, p=p: hook(mod, args, p)) for p, m in modules.items()]
        try:
            stack_block = self.stack[block]
            for args, kwargs in self.inputs:
                counts.clear()
                try:
                    stack_block(*args, **kwargs)
                except _Reached:
                    pass
                if own is not None and first[0]:
                    mine = seen[own]
                    if any(not xs for xs in seen.values()):
                        own = None  # a module the first batch never called (routed experts): run every batch whole
                    else:
                        wanted = {q: len(xs) for q, xs in seen.items()
                                  if q == own or (len(xs) == len(mine) and all(map(_same_tensor, xs, mine)))}
                    first[0] = False
            self.forwards += 1
        finally:
            for h in handles:
                h.remove()
        return seen


def _block_stack(model: nn.Module, stages: list[Stage]) -> tuple[str, list[int]] | None:
    """The ``ModuleList``/``Sequential`` holding the most stages (at least two blocks' worth), with the
    block index of every stage (-1 outside it); None when no stack holds stages of two blocks, or the
    stages inside it are not contiguous and in block order."""
    best: tuple[int, str] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) < 2 or not name:
            continue
        prefix = name + "."
        blocks = {s.module_path[len(prefix):].split(".")[0] for s in stages if s.module_path.startswith(prefix)}
        blocks = {b for b in blocks if b.isdigit()}
        if len(blocks) >= 2 and (best is None or len(blocks) > best[0]):
            best = (len(blocks), name)
    if best is None:
        return None
    prefix = best[1] + "."
    index = []
    for s in stages:
        head = s.module_path[len(prefix):].split(".")[0] if s.module_path.startswith(prefix) else ""
        # a stage that IS a block (a Linear directly in the list) is recorded through the whole model
        index.append(int(head) if head.isdigit() and s.module_path != prefix + head else -1)
    inside = [i for i, b in enumerate(index) if b >= 0]
    if not inside or inside != list(range(inside[0], inside[-1] + 1)) or \
            any(index[i] > index[j] for i, j in zip(inside, inside[1:])):
        return None
    return best[1], index


@torch.no_grad()
def _chain_holds(model: nn.Module, path: str, batch) -> str | None:
    """Check on one batch that the model calls the blocks of ``path`` once each, in order, every block
    taking the previous one's output as its first argument and the same other arguments as block 0.
    Returns None when it holds, else why not."""
    stack = model.get_submodule(path)
    calls: list[tuple[int, tuple, dict, object]] = []
    handles = [blk.register_forward_hook(lambda mod, args, kwargs, out, i=i: calls.append((i, args, kwargs, out)),
                                         with_kwargs=True) for i, blk in enumerate(stack)]
    try:
        call_model(model, batch)
    except Exception as exc:
        return f"the model failed on a calibration batch ({type(exc).__name__})"
    finally:
        for h in handles:
            h.remove()
    if [c[0] for c in calls] != list(range(len(stack))):
        return f"its blocks are not called once each in order (calls: {[c[0] for c in calls][:12]})"
    for (_, args0, kwargs0, _), (i, args, kwargs, _) in zip(calls, calls[1:]):
        previous = calls[i - 1][3]
        if not args or not _same(args[0], _first(previous)):
            return f"block {i} does not take block {i - 1}'s output as its first argument"
        if not _same(args[1:], calls[0][1][1:]) or not _same(kwargs, calls[0][2]):
            return f"block {i} gets other arguments than block 0"
    return None


class SequentialRecorder:
    """Calibration inputs of each stage of a model compressed stage by stage, in forward order.

    ``inputs(stage)`` returns the rows every weight of the stage multiplies in ``model`` as it is now
    (the stages before it already compressed): ``{param name: X}``. Stages must be asked for in
    forward order. ``batches`` (model inputs: tuples or
    mappings) are drawn once and replayed for every recording.

    Cost. Recording a stage by running the whole model costs one forward per stage, so depth x
    layers in all. When the stages sit in the blocks of one stack (``encoder.layer.0 ... 5``; a
    ``ModuleList`` or ``nn.Sequential``), the recorder instead caches the calibration activations at
    the first block's input once and carries them forward block by block: each block runs on the
    outputs of the already-compressed blocks before it, once per group of stages that share an input
    tensor (q, k, v projections record together) and once more to move on, so the cost grows
    linearly with depth; after the first batch each such run stops at the first module the stage
    does not need (on a pretrained 6-block encoder, sparsegpt at transposable 4:8 on 64 x 64 tokens
    went from 46.4 to 38.7 s). It first checks on one batch that the model really chains its blocks (each
    called once, in order, on the previous one's output, with the same other arguments); when it
    does not, or stages outside the stack come between its blocks, every stage is recorded through
    the whole model (``notes`` says so). Stages before or after the stack always are.
    """

    def __init__(self, model: nn.Module, stages: list[Stage], batches: Iterator, rows: int):
        self.model, self.rows = model, rows
        self.batches = _Replay(iter(batches))  # every recording sees the same batches
        self.stages = list(stages)
        self.notes: list[str] = []
        found = _block_stack(model, self.stages)
        self.stack, self.block_of = (found[0], found[1]) if found else (None, [-1] * len(self.stages))
        self._chain: _Blocks | None = None
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self._next = 0

    def _start_blocks(self) -> None:
        first = next(iter(self.batches()), None)
        why = "no calibration batch" if first is None else _chain_holds(self.model, self.stack, first)
        if why is not None:
            self.notes.append(f"calibration: recorded through the whole model for every layer, not block by block along "
                              f"{self.stack!r}: {why}")
            self.block_of = [-1] * len(self.stages)
            return
        self._chain = _Blocks(self.model, self.stack, self.batches(), self.rows)
        self.notes.append(f"calibration: activations carried block by block through {self.stack!r} "
                          f"({len(self.model.get_submodule(self.stack))} blocks, {len(self._chain.inputs)} batches)")

    @torch.no_grad()
    def inputs(self, stage: Stage) -> dict[str, torch.Tensor]:
        """The calibration rows of ``stage`` (the next stage in forward order, or a later one)."""
        try:
            i = next(k for k in range(self._next, len(self.stages)) if self.stages[k].module_path == stage.module_path
                     and self.stages[k].layers == stage.layers)
        except StopIteration:
            raise ValueError(f"{stage} asked for out of order (or not one of the recorder's stages)") from None
        self._next = i + 1
        block = self.block_of[i]
        if block >= 0 and self._chain is None and self.stack is not None:
            self._start_blocks()
            block = self.block_of[i]
        if block < 0:
            return module_inputs(self.model, stage.module_path, self.batches(), self.rows, stage.layers,
                                 stop_at_recurrent=True)
        return self._from_block(i, block, stage)

    def _from_block(self, i: int, block: int, stage: Stage):
        path = stage.module_path
        if i not in self._pending:
            # run the block once for this stage and every later stage of the block: a later stage whose
            # input is the very tensor this stage gets (q, k and v projections) was given it before this
            # stage ran, so its rows stay valid after this stage is compressed
            later = {k: s for k, s in enumerate(self.stages) if k >= i and self.block_of[k] == block}
            modules = {s.module_path: self.model.get_submodule(s.module_path) for s in later.values()}
            seen = self._chain.record(block, modules, own=path)
            mine = seen[path]
            if not mine:
                raise CompressorError(f"no calibration data reached {path!r}: block {block} of {self.stack!r} never calls it")
            self._pending = {}
            for k, s in later.items():
                xs = seen[s.module_path]
                if k == i or (s.module_path != path and len(xs) == len(mine) and all(map(_same_tensor, xs, mine))):
                    self._pending[k] = _capped([_parts(modules[s.module_path], x, s.layers) for x in xs], self.rows)
        # the block's outputs are carried to the next block when a stage there is asked for: by then
        # the caller has compressed this stage
        return self._pending.pop(i)

    @property
    def block_forwards(self) -> int:
        """Block runs of the model being compressed so far (0 when recording through the whole model)."""
        return 0 if self._chain is None else self._chain.forwards

