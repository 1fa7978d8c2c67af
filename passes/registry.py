"""The pass registry: recipe name -> (frozen config dataclass, function).

A pass is a function ``fn(state: CompressionState, config: XConfig, targets: list[Target]) ->
PassResult`` registered with ``@register_pass("name", XConfig)``. Its config class extends
:class:`PassConfig` (which carries ``targets``/``ignore``) and is parsed and validated when the
recipe loads, before any model is touched. What it did to each layer is a :class:`LayerUpdate`
in ``PassResult.layers``, which the pipeline checks and merges into the layer's record (and so
its report row). Training-time passes, N:M conversion, gates and kernel swaps all plug in the
same way.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import close_match_hint
from ..errors import RecipeError
from ..patterns import Pattern

__all__ = [
    "ALL_KINDS",
    "LayerUpdate",
    "PassConfig",
    "PassResult",
    "PassSpec",
    "register_pass",
    "get_pass",
    "available_passes",
]

#: Target kinds produced by capture.
ALL_KINDS = ("linear", "functional", "lstm", "gru", "rnn")


@dataclass(frozen=True)
class PassConfig:
    """Fields every pass has: which layers it applies to.

    ``targets``: module paths, target names (``rnn.weight_hh_l0``) or ``re:`` regexes; empty
    means every layer of a kind the pass supports. ``ignore``: the same syntax, removed from
    the selection. A pattern that matches nothing is an error.
    """

    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class LayerUpdate:
    """What a pass did to one layer; the pipeline merges it into the layer's record, and the
    record becomes the layer's report row (:class:`compressor.report.LayerRow`).

    A field left None keeps what earlier passes recorded; ``notes`` are appended. ``pattern`` and
    ``target_sparsity`` come together (the pattern the layer's mask now follows and the sparsity the
    pass aimed at). ``kernel``/``speedup``: the module that runs the layer and its measured speed-up
    over dense. ``compressed_flops`` and ``block_keep_frequency`` replace the row's own figures
    where the pass measured them itself (a gated layer: FLOPs per token including its gate, and
    how often the gate kept each block on calibration inputs). Checked when built: a pass that
    gets a field's type wrong fails there, not in the report.
    """

    pattern: Pattern | None = None
    target_sparsity: float | None = None
    kernel: str | None = None
    speedup: float | None = None
    notes: tuple[str, ...] = ()
    compressed_flops: int | None = None
    block_keep_frequency: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None and not isinstance(self.pattern, Pattern):
            raise TypeError(f"pattern must be a Pattern, got {type(self.pattern).__name__}")
        if (self.pattern is None) != (self.target_sparsity is None):
            raise TypeError("pattern and target_sparsity come together (both set, or both None)")
        if self.target_sparsity is not None and not (_real(self.target_sparsity) and 0 <= self.target_sparsity <= 1):
            raise TypeError(f"target_sparsity must be a number in [0, 1], got {self.target_sparsity!r}")
        if self.kernel is not None and not isinstance(self.kernel, str):
            raise TypeError(f"kernel must be a string, got {type(self.kernel).__name__}")
        if self.speedup is not None and not _real(self.speedup):
            raise TypeError(f"speedup must be a number, got {type(self.speedup).__name__}")
        if isinstance(self.notes, str) or not all(isinstance(n, str) for n in self.notes):
            raise TypeError("notes must be a sequence of strings")
        object.__setattr__(self, "notes", tuple(self.notes))  # a pass may build them as a list
        if self.compressed_flops is not None and not (isinstance(self.compressed_flops, int)
                                                      and not isinstance(self.compressed_flops, bool)
                                                      and self.compressed_flops >= 0):
            raise TypeError(f"compressed_flops must be a non-negative int, got {self.compressed_flops!r}")
        if self.block_keep_frequency is not None and not (
                isinstance(self.block_keep_frequency, list)
                and all(isinstance(r, list) and all(_real(v) for v in r) for r in self.block_keep_frequency)):
            raise TypeError("block_keep_frequency must be a list of lists of numbers (block rows x block columns)")


@dataclass
class PassResult:
    """What a pass did: per-target records for the report and free-form notes."""

    #: target name -> what the pass did to that layer; merged into the state's layer records.
    #: Only targets the pass was given; the pipeline refuses anything else as a bug of the pass.
    layers: dict[str, LayerUpdate] = field(default_factory=dict)
    #: target name -> reason, for targets the pass selected but left unchanged.
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: pass-level figures for the report (e.g. block-norm histograms, losses).
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassSpec:
    """A registered pass."""

    name: str
    config_cls: type
    fn: Callable[..., PassResult]
    kinds: tuple[str, ...]
    doc: str
    #: trains the model: the pipeline checkpoints for --resume and, unless the caller gives a
    #: teacher, keeps the dense model before any pass as the tasks' teacher
    trains: bool = False
    #: reads the dense model as it was before any pass (calibration data) whatever the teacher
    needs_reference: bool = False
    #: may bring back weights an earlier mask removed (nm_convert: the earlier mask is only its
    #: solvers' prior); for every other pass the pipeline checks that masks only shrink
    regrows: bool = False


_REGISTRY: dict[str, PassSpec] = {}


def register_pass(name: str, config_cls: type, kinds: tuple[str, ...] = ALL_KINDS, trains: bool = False,
                  needs_reference: bool = False, regrows: bool = False):
    """Decorator registering ``fn(state, config, targets) -> PassResult`` under ``name``
    (``state``: :class:`compressor.pipeline.CompressionState`; ``targets``: the
    :class:`compressor.capture.Target` records the pass's ``targets``/``ignore`` select).

    ``trains``: the pass runs the fine-tuning loop (:func:`compressor.training.fine_tune`).
    ``needs_reference``: the pass reads ``state.reference``, the dense model before any pass
    (a training pass gets it as its tasks' teacher without asking, unless the caller gives one).
    ``regrows``: the pass may keep weights an earlier mask removed (see :class:`PassSpec`).
    """
    if not issubclass(config_cls, PassConfig):
        raise TypeError(f"config class of pass {name!r} must extend PassConfig")

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} is registered twice")
        _REGISTRY[name] = PassSpec(name, config_cls, fn, tuple(kinds), (fn.__doc__ or "").strip(), trains, needs_reference,
                                   regrows)
        return fn

    return decorate


def get_pass(name: str, path: str = "pass") -> PassSpec:
    """The registered pass ``name``; a RecipeError with a close-match hint otherwise."""
    from . import _load_all

    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RecipeError(
            path,
            f"unknown pass {name!r}{close_match_hint(str(name), _REGISTRY)}; available: {', '.join(sorted(_REGISTRY))}",
        ) from None


def available_passes() -> dict[str, PassSpec]:
    """Every registered pass by name."""
    from . import _load_all

    _load_all()
    return dict(sorted(_REGISTRY.items()))
