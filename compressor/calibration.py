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

from .errors import CompressorError

__all__ = ["module_inputs", "rnn_layer_inputs", "call_model", "task_batches"]


def call_model(model: nn.Module, inputs):
    """``model(**inputs)`` for a mapping of keyword inputs (a Hugging Face model's ``input_ids`` and
    ``attention_mask``), else ``model(*inputs)``: what a task's ``inputs(batch)`` returns."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


#: First task step of calibration batches: far from the training passes' own steps, so calibration
#: never sees the batches a fine-tuning pass trained on.
CALIBRATION_STEP = 1_000_000


def task_batches(task) -> Iterator:
    """A task's model inputs for calibration, batch after batch (the same batches on every call):
    a tuple of positional inputs, or a mapping of keyword inputs (kept a mapping, so a Hugging Face
    model gets ``input_ids=`` and ``attention_mask=``). A task that runs out of data (``StopIteration``)
    ends them."""
    step = 0
    while True:
        try:
            batch = task.batch(CALIBRATION_STEP + step)
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
                    f"a calibration batch does not fit the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
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
