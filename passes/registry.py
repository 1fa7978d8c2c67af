"""The pass registry: recipe name -> (frozen config dataclass, function).

A pass is a function ``fn(state, config, targets) -> PassResult`` registered with
``@register_pass("name", ConfigClass)``. Its config class extends :class:`PassConfig`
(which carries ``targets``/``ignore``) and is parsed and validated when the recipe loads,
before any model is touched. Training-time passes, N:M conversion, gates and kernel swaps all
plug in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import close_match_hint
from ..errors import RecipeError

__all__ = [
    "ALL_KINDS",
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


@dataclass
class PassResult:
    """What a pass did: per-target records for the report and free-form notes."""

    #: target name -> dict with at least ``pattern`` (dict) and ``target_sparsity``; merged
    #: into the state's layer records.
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
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
    """Decorator registering ``fn(state, config, targets) -> PassResult`` under ``name``.

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
