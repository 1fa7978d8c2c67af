"""Module replacements: sparse kernel modules swapped in for dense ones, recorded and replayed.

A replacement is a :class:`Replacement` record: the module path, a :class:`ReplacementKind` and
the kind's options (:class:`BlockKernelOptions`, :class:`NMKernelOptions`, :class:`GateOptions`),
all checked when built. The passes create them (``swap_kernels``, ``dynamic_gate``), the pipeline
keeps them typed, and artifacts and checkpoints store them as JSON, ``{"module": path, "kind":
..., "options": {...}}`` (:meth:`Replacement.to_json`); an artifact's records are untrusted and
:meth:`Replacement.from_json` is the one validator they go through when it loads (known kind,
options of that kind's names, types and ranges, one line naming the bad field).

Artifacts store every masked weight packed in its pattern's layout (:mod:`compressor.packing`),
whichever kernels were installed; :func:`compressor.load` builds each kernel module straight from
those packed parts (:func:`kernel_request` names the format, :func:`build_packed` builds the
module; no dense copy of a swapped weight), and replays format-1 artifacts (dense weights plus
masks) with the kernels' deterministic ``from_dense`` (:func:`replay`). Both give the module the
pipeline installed, tensor for tensor.

Structural replacements (``"structural": true`` in the JSON; the ``dynamic_gate`` pass's
``gated_linear``, ``gated_lstm``, ``gated_gru``) add parameters the dense model does not have (gate
networks), so they have no dense equivalent: :func:`densify` leaves them as they are, artifacts
store their own parameters, and the loader replays them (fresh modules of the right shapes) BEFORE
it loads the saved state (:func:`replay` with ``structural=True``), the kernel swaps after.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Union

import torch
import torch.nn as nn

from .errors import short
from .kernels import BlockSparseLinear, GatedBlockLinear, GatedGRU, GatedLSTM, NMLinear, SparseGRU, SparseLSTM, gated_linear
from .kernels.backends import BACKENDS, Backend
from .kernels.formats import BSR, BalancedBlock, NMPacked
from .kernels.gated_ops import GATE_MODES
from .kernels.gated_rnn import GATE_INITS

__all__ = ["Backend", "ReplacementKind", "BlockKernelOptions", "NMKernelOptions", "GateOptions", "Replacement",
           "build_replacement", "build_gated", "kernel_request", "build_packed", "set_module", "densify", "dense_model",
           "dense_weight", "replay"]

_SPARSE_RNN = (SparseLSTM, SparseGRU)
_GATED = (GatedBlockLinear, GatedLSTM, GatedGRU)


class ReplacementKind(str, Enum):
    """What a replacement installs; the value is the string artifacts store."""

    BLOCK_SPARSE_LINEAR = "block_sparse_linear"  #: BlockSparseLinear for an nn.Linear (swap_kernels)
    NM_LINEAR = "nm_linear"  #: NMLinear for an nn.Linear (swap_kernels)
    SPARSE_LSTM = "sparse_lstm"  #: SparseLSTM for an nn.LSTM (swap_kernels)
    SPARSE_GRU = "sparse_gru"  #: SparseGRU for an nn.GRU (swap_kernels)
    GATED_LINEAR = "gated_linear"  #: GatedLinear for an nn.Linear (dynamic_gate)
    GATED_LSTM = "gated_lstm"  #: GatedLSTM for an nn.LSTM (dynamic_gate)
    GATED_GRU = "gated_gru"  #: GatedGRU for an nn.GRU (dynamic_gate)

    # str() and f-strings give the value, as the plain strings did
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def structural(self) -> bool:
        """The module has parameters of its own (gate networks): no dense equivalent, replayed
        before the saved state loads."""
        return self in (ReplacementKind.GATED_LINEAR, ReplacementKind.GATED_LSTM, ReplacementKind.GATED_GRU)

    @property
    def options_type(self) -> type:
        """The options class this kind's records carry."""
        return _OPTIONS_OF[self]


def _names(values) -> str:
    return ", ".join(repr(str(v)) for v in values)


#: the largest block side or gate rank a record may name (an artifact's records are untrusted)
_MAX_DIM = 1 << 16


@dataclass(frozen=True)
class _Check:
    """One option's check: ``ok(value)``, what is allowed (for the error), and the typed value."""

    ok: Callable[[object], bool]
    allowed: str
    convert: Callable[[object], object] = lambda v: v


def _is_int(v: object, low: int, high: int) -> bool:
    return type(v) is int and low <= v <= high


_CHECKS = {
    "block": _Check(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x, 1, _MAX_DIM) for x in v),
                    f"two integers in [1, {_MAX_DIM}]", tuple),
    "layout": _Check(lambda v: v in ("auto", "balanced", "bsr"), "'auto', 'balanced' or 'bsr'"),
    "backend": _Check(lambda v: isinstance(v, str) and v in BACKENDS, f"one of {_names(BACKENDS)}", Backend),
    "n": _Check(lambda v: _is_int(v, 1, 64), "an integer in [1, 64]"),
    "m": _Check(lambda v: _is_int(v, 1, 64), "an integer in [1, 64]"),
    "keep": _Check(lambda v: type(v) in (int, float) and 0 < v <= 1, "a number in (0, 1]"),
    "mode": _Check(lambda v: v in GATE_MODES, f"one of {_names(GATE_MODES)}"),
    "rank": _Check(lambda v: _is_int(v, 0, _MAX_DIM), f"an integer in [0, {_MAX_DIM}]"),
    "init": _Check(lambda v: v in GATE_INITS, f"one of {_names(GATE_INITS)}"),
    "seed": _Check(lambda v: _is_int(v, 0, 2**63 - 1), "a non-negative integer below 2**63"),
    "weights": _Check(lambda v: v is None or (isinstance(v, (list, tuple)) and all(isinstance(x, str) and len(x) < 256
                                                                                  for x in v)),
                      "null or a list of weight names", lambda v: None if v is None else tuple(v)),
}


class _Options:
    """Shared by the option classes: every field checked on construction, JSON in and out.

    A field whose default is None is optional and left out of the JSON while None, so a record
    written without it (no producer writes ``layout``) reads and writes back unchanged."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (f.default is None and value is None):
                _check_option(f.name, value, f"{type(self).__name__}.{f.name}")
            object.__setattr__(self, f.name, value if value is None else _CHECKS[f.name].convert(value))
        self._check_together(vars(self), type(self).__name__)

    @classmethod
    def _check_together(cls, values: dict, where: str) -> None:
        """Checks across fields of the checked ``values`` (ValueError naming the field)."""

    @classmethod
    def from_json(cls, obj: object, where: str, kind: ReplacementKind | None = None):
        """The options in ``obj`` (a record's ``options`` mapping); ValueError naming the bad key."""
        what = f"a {kind}" if kind is not None else cls.__name__
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a mapping of options, got {type(obj).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in obj.items():
            if key not in fields:
                raise ValueError(f"{where}: unknown option {short(key, 40)} for {what}; allowed: {', '.join(fields)}")
            if not (fields[key].default is None and value is None):
                _check_option(key, value, f"{where}.{key}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        for name in required:
            if name not in obj:
                raise ValueError(f"{where}.{name}: missing; {what} needs {', '.join(required)}")
        values = {k: (v if v is None else _CHECKS[k].convert(v)) for k, v in obj.items()}
        cls._check_together(values, where)
        return cls(**values)

    def to_json(self) -> dict:
        """The options as JSON-able data (tuples as lists, enums as their strings)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
        return out


def _check_option(key: str, value: object, where: str) -> None:
    check = _CHECKS[key]
    if not check.ok(value):
        raise ValueError(f"{where}: {short(value, 40)} is invalid; expected {check.allowed}")


@dataclass(frozen=True)
class BlockKernelOptions(_Options):
    """Options of ``block_sparse_linear``, ``sparse_lstm``, ``sparse_gru``: the pattern's ``block``
    ``(h, w)``; the weight's ``layout`` (``auto``/``balanced``/``bsr``; None: not recorded, ``auto``);
    the modules' ``backend`` (None: not recorded, the modules keep theirs)."""

    block: tuple[int, int]
    layout: str | None = None
    backend: Backend | None = None


@dataclass(frozen=True)
class NMKernelOptions(_Options):
    """Options of ``nm_linear``: keep at most ``n`` of every ``m`` inputs; the module's ``backend``
    (None: not recorded)."""

    n: int
    m: int
    backend: Backend | None = None

    @classmethod
    def _check_together(cls, values: dict, where: str) -> None:
        if values["n"] > values["m"]:
            raise ValueError(f"{where}.n: {values['n']} is more than m={values['m']}; N:M keeps n of every m")


@dataclass(frozen=True)
class GateOptions(_Options):
    """Options of ``gated_linear``, ``gated_lstm``, ``gated_gru`` (the ``dynamic_gate`` pass's fields):
    ``block``, ``keep``, ``mode``, ``rank``, ``init``, ``seed``, and the recurrent weights gated
    (``weights``; None: every one)."""

    block: tuple[int, int]
    keep: float
    mode: str
    rank: int
    init: str = "random"
    seed: int = 0
    weights: tuple[str, ...] | None = None


ReplacementOptions = Union[BlockKernelOptions, NMKernelOptions, GateOptions]
_OPTIONS_OF = {ReplacementKind.BLOCK_SPARSE_LINEAR: BlockKernelOptions, ReplacementKind.SPARSE_LSTM: BlockKernelOptions,
               ReplacementKind.SPARSE_GRU: BlockKernelOptions, ReplacementKind.NM_LINEAR: NMKernelOptions,
               ReplacementKind.GATED_LINEAR: GateOptions, ReplacementKind.GATED_LSTM: GateOptions,
               ReplacementKind.GATED_GRU: GateOptions}
_RECORD_FIELDS = ("module", "kind", "options", "structural")


@dataclass(frozen=True)
class Replacement:
    """One module replacement: the module at ``module`` becomes a ``kind`` module built with
    ``options`` (the options class of the kind, :attr:`ReplacementKind.options_type`)."""

    module: str
    kind: ReplacementKind
    options: ReplacementOptions

    def __post_init__(self) -> None:
        if not isinstance(self.module, str):
            raise TypeError(f"module must be a module path (a string), got {type(self.module).__name__}")
        object.__setattr__(self, "kind", ReplacementKind(self.kind))
        if type(self.options) is not self.kind.options_type:
            raise TypeError(f"a {self.kind} takes {self.kind.options_type.__name__}, got {type(self.options).__name__}")

    @property
    def structural(self) -> bool:
        """See :attr:`ReplacementKind.structural`."""
        return self.kind.structural

    def to_json(self) -> dict:
        """The record as artifacts and checkpoints store it: ``{"module", "kind", "options"}``, plus
        ``"structural": true`` for the gated kinds."""
        out = {"module": self.module, "kind": self.kind.value, "options": self.options.to_json()}
        if self.structural:
            out["structural"] = True
        return out

    @classmethod
    def from_json(cls, obj: object, where: str) -> "Replacement":
        """The record in ``obj`` (untrusted: an artifact's metadata); ValueError with one line naming
        the bad field (``where`` is the record's own path, e.g. ``replacements[0]``) otherwise."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected {{module: str, kind: str, options: {{...}}}}, got {type(obj).__name__}")
        for key in obj:
            if key not in _RECORD_FIELDS:
                raise ValueError(f"{where}: unknown field {short(key, 40)}; allowed: {', '.join(_RECORD_FIELDS)}")
        module = obj.get("module")
        if not isinstance(module, str):
            raise ValueError(f"{where}.module: expected a module path (a string), got {short(module, 40)}")
        kinds = [k.value for k in ReplacementKind]
        if not isinstance(obj.get("kind"), str) or obj["kind"] not in kinds:
            raise ValueError(f"{where}.kind: {short(obj.get('kind'), 40)} is not one of {', '.join(kinds)}")
        kind = ReplacementKind(obj["kind"])
        structural = obj.get("structural", False)
        if not isinstance(structural, bool) or structural != kind.structural:
            raise ValueError(f"{where}.structural: {short(structural, 40)} does not match kind {kind} (true exactly "
                             f"for {', '.join(k.value for k in ReplacementKind if k.structural)})")
        return cls(module, kind, kind.options_type.from_json(obj.get("options"), f"{where}.options", kind))


def build_gated(module: nn.Module, options: GateOptions) -> nn.Module:
    """The gated module for a dense ``nn.Linear`` / ``nn.LSTM`` / ``nn.GRU`` (dynamic_gate options)."""
    o = options
    if isinstance(module, nn.Linear):
        return gated_linear(module, o.block, o.keep, o.mode, o.rank, o.init, o.seed)
    if isinstance(module, (nn.LSTM, nn.GRU)):
        cls = GatedLSTM if isinstance(module, nn.LSTM) else GatedGRU
        weights = None if o.weights is None else list(o.weights)
        return cls.from_dense(module, weights, o.block, o.keep, o.mode, o.rank, o.init, o.seed)
    raise TypeError(f"cannot gate a {type(module).__name__}; only nn.Linear, nn.LSTM and nn.GRU")


def build_replacement(module: nn.Module, rep: Replacement, masks: dict[str, torch.Tensor]) -> nn.Module:
    """The ``rep.kind`` module for dense ``module`` whose weights hold the masked values.

    ``masks`` maps the module's own parameter names (``weight``, ``weight_hh_l0``) to bool masks;
    a recorded ``backend`` is set on every kernel module inside.
    """
    return _with_backend(_build(module, rep, masks), rep.options)


def _with_backend(new: nn.Module, options: ReplacementOptions) -> nn.Module:
    backend = getattr(options, "backend", None)
    if backend is not None:
        for sub in new.modules():
            if hasattr(sub, "backend"):
                sub.backend = backend
    return new


def kernel_request(rep: Replacement) -> dict | None:
    """The sparse format a kernel swap's masked weights are built in, as keywords of
    :func:`compressor.packing.kernel_format` (``block`` and ``layout``, or ``nm``); None for the
    structural kinds (gated modules store their own dense parameters)."""
    o = rep.options
    if isinstance(o, BlockKernelOptions):
        return {"block": o.block, "layout": o.layout or "auto"}
    if isinstance(o, NMKernelOptions):
        return {"nm": (o.n, o.m)}
    return None


def build_packed(module: nn.Module, rep: Replacement, formats: dict[str, object],
                 tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The kernel module of a swap record built from ready sparse formats, with no dense copy of its
    weights (what :func:`compressor.load` does with a packed artifact; :func:`build_replacement`
    builds the same module from dense masked weights).

    ``module`` is the dense module the record replaces; only its sizes and flags are read (it may
    live on the meta device). ``formats`` maps its masked weights' own names to the formats
    :func:`kernel_request` asks for (``BalancedBlock``/``BSR``/``NMPacked``), ``tensors`` its other
    own tensors (biases, unmasked recurrent weights). ValueError/KeyError/TypeError when they do not
    fit the module.
    """
    kind = rep.kind

    def block_linear(fmt, bias, shape):
        if not isinstance(fmt, (BalancedBlock, BSR)) or tuple(fmt.shape) != tuple(shape):
            raise ValueError(f"expected a block-sparse weight of shape {tuple(shape)}")
        return BlockSparseLinear(fmt, bias)

    def check_bias(bias, out):
        if bias is not None and tuple(bias.shape) != (out,):
            raise ValueError(f"bias of shape {tuple(bias.shape)}, expected ({out},)")
        return bias

    if kind in (ReplacementKind.BLOCK_SPARSE_LINEAR, ReplacementKind.NM_LINEAR):
        if not isinstance(module, nn.Linear) or set(formats) != {"weight"}:
            raise ValueError(f"a {kind} replaces an nn.Linear whose weight is packed")
        want_bias = module.bias is not None
        bias = check_bias(tensors["bias"], module.out_features) if want_bias else None
        shape = (module.out_features, module.in_features)
        if kind == ReplacementKind.BLOCK_SPARSE_LINEAR:
            return _with_backend(block_linear(formats["weight"], bias, shape), rep.options)
        fmt = formats["weight"]
        if not isinstance(fmt, NMPacked) or tuple(fmt.shape) != shape:
            raise ValueError(f"expected an N:M weight of shape {shape}")
        return _with_backend(NMLinear(fmt, bias), rep.options)
    if kind in (ReplacementKind.SPARSE_LSTM, ReplacementKind.SPARSE_GRU):
        cls = SparseLSTM if kind == ReplacementKind.SPARSE_LSTM else SparseGRU
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
        return _with_backend(cls.from_projections(module, cells), rep.options)
    raise ValueError(f"{kind!s} is not a kernel swap; known: {', '.join(k for k in ReplacementKind if not k.structural)}")


def _assigned_linear(weight: torch.Tensor, bias: torch.Tensor | None, shape: tuple[int, int]) -> nn.Linear:
    """An ``nn.Linear`` holding these tensors (built on the meta device: nothing initialised, then assigned)."""
    if tuple(weight.shape) != shape:
        raise ValueError(f"weight of shape {tuple(weight.shape)}, expected {shape}")
    lin = nn.Linear(shape[1], shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    lin.weight = nn.Parameter(weight)
    if bias is not None:
        lin.bias = nn.Parameter(bias)
    return lin


def _build(module: nn.Module, rep: Replacement, masks: dict[str, torch.Tensor]) -> nn.Module:
    kind, o = rep.kind, rep.options
    if kind == ReplacementKind.BLOCK_SPARSE_LINEAR:
        return BlockSparseLinear.from_dense(module, masks["weight"], o.block, o.layout or "auto")
    if kind == ReplacementKind.NM_LINEAR:
        return NMLinear.from_dense(module, masks["weight"], o.n, o.m)
    if kind.structural:
        return build_gated(module, o)
    cls = SparseLSTM if kind == ReplacementKind.SPARSE_LSTM else SparseGRU
    return cls.from_dense(module, masks, o.block, o.layout or "auto")


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


def replay(model: nn.Module, records: list[Replacement], masks: dict[str, torch.Tensor] | None = None,
           structural: bool = False) -> None:
    """Re-install recorded replacements on a dense model (artifact loading): the structural ones
    (``structural=True``, before the saved state is loaded) or the kernel swaps (after)."""
    masks = masks or {}
    for rec in records:
        if rec.structural != structural:
            continue
        prefix = f"{rec.module}."
        own = {k[len(prefix):]: v for k, v in masks.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        set_module(model, rec.module, build_replacement(model.get_submodule(rec.module), rec, own))
