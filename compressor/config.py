"""Build frozen config dataclasses from recipe mappings, with errors that name the recipe path.

Every pass config and the recipe's own sections are frozen dataclasses. :func:`parse_config`
checks that every key is a field (unknown keys fail with a close-match hint), converts values
to the annotated types (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, a ``str``
:class:`~enum.Enum` (one of its values, given as the string), ``tuple[int, int]``,
``tuple[str, ...]``, ``X | None``) and then calls the dataclass's
``validate(path)`` hook, if it has one, for range checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Literal, Union

from .errors import RecipeError, short

__all__ = ["parse_config", "config_to_dict", "close_match_hint", "check_range", "check_block", "MAX_BLOCK"]

#: the largest block side a recipe may ask for (a block larger than its layer is refused when targets resolve)
MAX_BLOCK = 1 << 16


def close_match_hint(key: str, allowed: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest allowed key, or an empty string."""
    match = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_range(path: str, value: float, low: float, high: float, *, low_open=False, high_open=True) -> None:
    """Raise RecipeError unless ``value`` lies in the interval [low, high) (brackets as told)."""
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise RecipeError(path, f"{short(value)} is outside the allowed range {interval}")


def check_solver(path: str, solver: str, n: int, m: int, transposable: bool) -> None:
    """A transposable N:M solver name: one of the solvers, and (when ``transposable``) one that can
    solve ``n``:``m`` on this machine (``enumerate`` only for small M; ``cyclecancel`` needs its C
    source to compile), checked before any model is loaded."""
    from .solvers.registry import SOLVER_NAMES, resolve_solver

    if solver not in SOLVER_NAMES:
        raise RecipeError(path, f"{solver!r} is not a solver; choose from {', '.join(SOLVER_NAMES)}")
    if transposable and 0 < n < m:
        try:
            resolve_solver(solver, n, m)
        except ValueError as exc:
            raise RecipeError(path, str(exc)) from None


def check_block(path: str, block: tuple[int, int]) -> None:
    """Raise RecipeError unless both block sizes lie in [1, MAX_BLOCK]."""
    if not all(1 <= b <= MAX_BLOCK for b in block):
        raise RecipeError(path, f"{list(block)} is invalid; both sizes must be in [1, {MAX_BLOCK}]")


def parse_config(cls: type, data: Any, path: str, *, skip: typing.Collection[str] = ()) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``data``; ``skip`` keys are ignored here."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(path, f"expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key in skip:
            continue
        if key not in fields:
            allowed = sorted(set(fields) | set(skip))
            raise RecipeError(
                f"{path}.{key}" if path else str(key),
                f"unknown key{close_match_hint(str(key), allowed)}; allowed keys: {', '.join(allowed)}",
            )
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
    missing = [
        name for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(path, f"missing required key(s): {', '.join(missing)}")
    config = cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate(path)
    return config


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if _is_enum(tp):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(path, f"{short(value)} is not valid; expected {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            hint = close_match_hint(str(value), [str(a) for a in args])
            raise RecipeError(path, f"{short(value)} is not allowed{hint}; allowed: {', '.join(repr(a) for a in args)}")
        return value
    if _is_enum(tp):
        values = [m.value for m in tp]
        if not isinstance(value, str) or value not in values:
            hint = close_match_hint(str(value), values)
            raise RecipeError(path, f"{short(value)} is not allowed{hint}; allowed: {', '.join(repr(v) for v in values)}")
        return tp(value)
    if origin is tuple:
        if isinstance(value, (str, int, float)) and len(args) == 2 and args[1] is Ellipsis:
            value = [value]  # a single item where a list is expected
        if not isinstance(value, (list, tuple)):
            raise RecipeError(path, f"expected a list, got {short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(path, f"expected {len(args)} values, got {len(value)}: {short(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(path, f"expected true or false, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(path, f"expected an integer, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(path, f"expected a number, got {short(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise RecipeError(path, f"expected a finite number, got {short(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(path, f"expected a string, got {short(value)}")
        return value
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return parse_config(tp, value, path)
    raise TypeError(f"parse_config: unsupported annotation {tp!r} at {path}")  # a bug in a config class


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def config_to_dict(config: Any) -> dict:
    """A config dataclass as plain YAML-friendly data (tuples become lists, enums their values)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, enum.Enum):
            return v.value
        return v

    return plain(config)
