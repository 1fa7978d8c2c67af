"""Module replacements: sparse kernel modules swapped in for dense ones, recorded and replayed.

A replacement is a small JSON-able record ``{"module": path, "kind": ..., "options": {...}}``.
Artifacts store every masked weight packed in its pattern's layout (:mod:`compressor.packing`),
whichever kernels were installed; :func:`compressor.load` builds each kernel module straight
from those packed parts (:func:`kernel_request` names the format, :func:`build_packed` builds
the module; no dense copy of a swapped weight), and replays format-1 artifacts (dense weights
plus masks) with the kernels' deterministic ``from_dense`` (:func:`replay`). Both give the
module the pipeline installed, tensor for tensor.

Structural replacements (``"structural": true``; the ``dynamic_gate`` pass's ``gated_linear``,
``gated_lstm``, ``gated_gru``) add parameters the dense model does not have (gate networks), so
they have no dense equivalent: :func:`densify` leaves them as they are, artifacts store their own
parameters, and the loader replays them (fresh modules of the right shapes) BEFORE it loads the
saved state (:func:`replay` with ``structural=True``), the kernel swaps after.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .kernels import BlockSparseLinear, GatedBlockLinear, GatedGRU, GatedLSTM, NMLinear, SparseGRU, SparseLSTM, gated_linear
from .kernels.formats import BSR, BalancedBlock, NMPacked

__all__ = ["REPLACEMENT_KINDS", "STRUCTURAL_KINDS", "check_record", "build_replacement", "build_gated", "kernel_request",
           "build_packed", "set_module", "densify", "dense_model", "dense_weight", "replay"]

REPLACEMENT_KINDS = ("block_sparse_linear", "nm_linear", "sparse_lstm", "sparse_gru", "gated_linear", "gated_lstm",
                     "gated_gru")
#: kinds whose modules have parameters of their own (no dense equivalent)
STRUCTURAL_KINDS = ("gated_linear", "gated_lstm", "gated_gru")
_SPARSE_RNN = (SparseLSTM, SparseGRU)
_GATED = (GatedBlockLinear, GatedLSTM, GatedGRU)


#: option -> (check, what is allowed) for every option a replacement record may carry; an
#: artifact's records are untrusted input and are checked against this before any module is built
_MAX_DIM = 1 << 16
_OPTION_CHECKS = {
    "block": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2
              and all(type(x) is int and 1 <= x <= _MAX_DIM for x in v), f"two integers in [1, {_MAX_DIM}]"),
    "layout": (lambda v: v in ("auto", "balanced", "bsr"), "'auto', 'balanced' or 'bsr'"),
    "backend": (lambda v: v in ("auto", "torch", "triton"), "'auto', 'torch' or 'triton'"),
    "n": (lambda v: type(v) is int and 1 <= v <= 64, "an integer in [1, 64]"),
    "m": (lambda v: type(v) is int and 1 <= v <= 64, "an integer in [1, 64]"),
    "keep": (lambda v: type(v) in (int, float) and 0 < v <= 1, "a number in (0, 1]"),
    "mode": (lambda v: v in ("global", "row"), "'global' or 'row'"),
    "rank": (lambda v: type(v) is int and 0 <= v <= _MAX_DIM, f"an integer in [0, {_MAX_DIM}]"),
    "init": (lambda v: v in ("random", "norm"), "'random' or 'norm'"),
    "seed": (lambda v: type(v) is int and 0 <= v < 2**63, "a non-negative integer"),
    "weights": (lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) and len(x) < 256 for x in v)),
                "null or a list of weight names"),
}


def check_record(rec: object, where: str) -> None:
    """Raise ValueError unless ``rec`` is a well-formed replacement record (kind known, options
    of the allowed names, types and ranges). Artifacts are checked with it before loading."""
    if not isinstance(rec, dict) or not isinstance(rec.get("module"), str) or not isinstance(rec.get("options"), dict):
        raise ValueError(f"{where}: expected {{module: str, kind: str, options: {{...}}}}")
    if rec.get("kind") not in REPLACEMENT_KINDS:
        raise ValueError(f"{where}.kind: {str(rec.get('kind'))[:40]!r} is not one of {', '.join(REPLACEMENT_KINDS)}")
    if bool(rec.get("structural")) != (rec["kind"] in STRUCTURAL_KINDS):
        raise ValueError(f"{where}.structural: does not match kind {rec['kind']}")
    for key, value in rec["options"].items():
        check = _OPTION_CHECKS.get(key)
        if check is None:
            raise ValueError(f"{where}.options: unknown option {str(key)[:40]!r}")
        if not check[0](value):
            raise ValueError(f"{where}.options.{key}: expected {check[1]}")


def build_gated(module: nn.Module, options: dict) -> nn.Module:
    """The gated module for a dense ``nn.Linear`` / ``nn.LSTM`` / ``nn.GRU`` (dynamic_gate options)."""
    block, keep, mode, rank = tuple(options["block"]), options["keep"], options["mode"], options["rank"]
    init, seed = options.get("init", "random"), options.get("seed", 0)
    if isinstance(module, nn.Linear):
        return gated_linear(module, block, keep, mode, rank, init, seed)
    if isinstance(module, (nn.LSTM, nn.GRU)):
        cls = GatedLSTM if isinstance(module, nn.LSTM) else GatedGRU
        return cls.from_dense(module, options.get("weights"), block, keep, mode, rank, init, seed)
    raise TypeError(f"cannot gate a {type(module).__name__}; only nn.Linear, nn.LSTM and nn.GRU")


def build_replacement(module: nn.Module, kind: str, masks: dict[str, torch.Tensor], options: dict) -> nn.Module:
    """The sparse module for dense ``module`` whose weights hold the masked values.

    ``masks`` maps the module's own parameter names (``weight``, ``weight_hh_l0``) to bool masks;
    ``options["backend"]`` (``torch``/``triton``/``auto``) is set on every kernel module inside.
    """
    return _with_backend(_build(module, kind, masks, options), options)


def _with_backend(new: nn.Module, options: dict) -> nn.Module:
    if "backend" in options:
        for sub in new.modules():
            if hasattr(sub, "backend"):
                sub.backend = options["backend"]
    return new


def kernel_request(kind: str, options: dict) -> dict | None:
    """The sparse format a kernel swap's masked weights are built in, as keywords of
    :func:`compressor.packing.kernel_format` (``block`` and ``layout``, or ``nm``); None for the
    structural kinds (gated modules store their own dense parameters)."""
    if kind in ("block_sparse_linear", "sparse_lstm", "sparse_gru"):
        return {"block": tuple(options["block"]), "layout": options.get("layout", "auto")}
    if kind == "nm_linear":
        return {"nm": (options["n"], options["m"])}
    return None


def build_packed(module: nn.Module, kind: str, formats: dict[str, object], tensors: dict[str, torch.Tensor],
                 options: dict) -> nn.Module:
    """The kernel module of a swap record built from ready sparse formats, with no dense copy of its
    weights (what :func:`compressor.load` does with a packed artifact; :func:`build_replacement`
    builds the same module from dense masked weights).

    ``module`` is the dense module the record replaces; only its sizes and flags are read (it may
    live on the meta device). ``formats`` maps its masked weights' own names to the formats
    :func:`kernel_request` asks for (``BalancedBlock``/``BSR``/``NMPacked``), ``tensors`` its other
    own tensors (biases, unmasked recurrent weights). ValueError/KeyError/TypeError when they do not
    fit the module.
    """
    def block_linear(fmt, bias, shape):
        if not isinstance(fmt, (BalancedBlock, BSR)) or tuple(fmt.shape) != tuple(shape):
            raise ValueError(f"expected a block-sparse weight of shape {tuple(shape)}")
        return BlockSparseLinear(fmt, bias)

    def check_bias(bias, out):
        if bias is not None and tuple(bias.shape) != (out,):
            raise ValueError(f"bias of shape {tuple(bias.shape)}, expected ({out},)")
        return bias

    if kind in ("block_sparse_linear", "nm_linear"):
        if not isinstance(module, nn.Linear) or set(formats) != {"weight"}:
            raise ValueError(f"a {kind} replaces an nn.Linear whose weight is packed")
        want_bias = module.bias is not None
        bias = check_bias(tensors["bias"], module.out_features) if want_bias else None
        shape = (module.out_features, module.in_features)
        if kind == "block_sparse_linear":
            return _with_backend(block_linear(formats["weight"], bias, shape), options)
        fmt = formats["weight"]
        if not isinstance(fmt, NMPacked) or tuple(fmt.shape) != shape:
            raise ValueError(f"expected an N:M weight of shape {shape}")
        return _with_backend(NMLinear(fmt, bias), options)
    if kind in ("sparse_lstm", "sparse_gru"):
        cls = SparseLSTM if kind == "sparse_lstm" else SparseGRU
        if not isinstance(module, cls._base):
            raise ValueError(f"a {kind} replaces an nn.{cls._base.__name__}")
        cells = {}
        for name in (n for n in module._flat_weights_names if n.startswith("weight_")):
            part = name[len("weight_"):]
            shape = tuple(getattr(module, name).shape)
            bias = check_bias(tensors["bias_" + part], shape[0]) if module.bias else None
            if name in formats:
                cells[part] = block_linear(formats[name], bias, shape)
            else:  # an unpruned weight of the layer stays a dense projection, its tensors as loaded
                cells[part] = _assigned_linear(tensors[name], bias, shape)
        unknown = sorted(set(formats) - {"weight_" + p for p in cells})
        if unknown:
            raise ValueError(f"packed weights {unknown} are not weights of the {kind}'s module")
        return _with_backend(cls.from_projections(module, cells), options)
    raise ValueError(f"{kind!r} is not a kernel swap; known: {', '.join(k for k in REPLACEMENT_KINDS if k not in STRUCTURAL_KINDS)}")


def _assigned_linear(weight: torch.Tensor, bias: torch.Tensor | None, shape: tuple[int, int]) -> nn.Linear:
    """An ``nn.Linear`` holding these tensors (built on the meta device: nothing initialised, then assigned)."""
    if tuple(weight.shape) != shape:
        raise ValueError(f"weight of shape {tuple(weight.shape)}, expected {shape}")
    lin = nn.Linear(shape[1], shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    lin.weight = nn.Parameter(weight)
    if bias is not None:
        lin.bias = nn.Parameter(bias)
    return lin


def _build(module: nn.Module, kind: str, masks: dict[str, torch.Tensor], options: dict) -> nn.Module:
    if kind == "block_sparse_linear":
        return BlockSparseLinear.from_dense(module, masks["weight"], tuple(options["block"]), options.get("layout", "auto"))
    if kind == "nm_linear":
        return NMLinear.from_dense(module, masks["weight"], options["n"], options["m"])
    if kind in STRUCTURAL_KINDS:
        return build_gated(module, options)
    if kind in ("sparse_lstm", "sparse_gru"):
        cls = SparseLSTM if kind == "sparse_lstm" else SparseGRU
        return cls.from_dense(module, masks, tuple(options["block"]), options.get("layout", "auto"))
    raise ValueError(f"unknown replacement kind {kind!r}; known: {', '.join(REPLACEMENT_KINDS)}")


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` inside ``model``."""
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, module)


def _dense_equivalent(module: nn.Module) -> nn.Module | None:
    """The dense module with this module's (masked) weights; gated modules give every stored weight."""
    if isinstance(module, GatedBlockLinear):
        lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        lin.weight = nn.Parameter(module.to_dense_weight().clone())
        if module.bias is not None:
            lin.bias = nn.Parameter(module.bias.detach().clone())
        return lin
    if isinstance(module, (BlockSparseLinear, NMLinear)):
        return module.to_linear()
    if isinstance(module, _SPARSE_RNN):
        return module.to_dense()
    return None


def densify(model: nn.Module, gated: bool = False) -> nn.Module:
    """A copy of ``model`` with every sparse kernel module replaced by its dense equivalent.

    Gated modules (structural replacements) stay as they are, since their gates have no dense
    form, unless ``gated``: then they too become dense modules holding every stored weight (the
    dense model a gated one is timed against; its outputs differ, as no block is skipped).
    """
    dense = copy.deepcopy(model)
    replaced: list[str] = []
    for path, module in list(dense.named_modules()):
        if any(path.startswith(p + ".") for p in replaced):
            continue  # inside a module already replaced as a whole (SparseLSTM's projections)
        if isinstance(module, _GATED) and not gated:
            replaced.append(path)  # kept whole, projections included
            continue
        equivalent = _dense_equivalent(module)
        if equivalent is not None and path:
            set_module(dense, path, equivalent)
            replaced.append(path)
    return dense


def dense_model(model: nn.Module) -> nn.Module:
    """``model`` with the dense modules' parameters only: itself when no kernel or gated module is in it,
    else ``densify(model, gated=True)`` (every stored weight in a dense module, no gate networks)."""
    if any(isinstance(m, (*_GATED, *_SPARSE_RNN, BlockSparseLinear, NMLinear)) for m in model.modules()):
        return densify(model, gated=True)
    return model


def dense_weight(model: nn.Module, module_path: str, param_name: str) -> torch.Tensor:
    """The dense (masked) weight ``module_path.param_name``, whether or not the module was swapped."""
    module = model.get_submodule(module_path)
    equivalent = _dense_equivalent(module)
    return getattr(equivalent if equivalent is not None else module, param_name).detach()


def replay(model: nn.Module, records: list[dict], masks: dict[str, torch.Tensor] | None = None,
           structural: bool = False) -> None:
    """Re-install recorded replacements on a dense model (artifact loading): the structural ones
    (``structural=True``, before the saved state is loaded) or the kernel swaps (after)."""
    masks = masks or {}
    for rec in records:
        if bool(rec.get("structural")) != structural:
            continue
        path = rec["module"]
        prefix = f"{path}."
        own = {k[len(prefix):]: v for k, v in masks.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        set_module(model, path, build_replacement(model.get_submodule(path), rec["kind"], own, rec["options"]))
