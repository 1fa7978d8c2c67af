"""The targeting language shared by every pass: ``targets:`` and ``ignore:`` lists.

An entry is either a plain name or a ``re:`` regular expression.

- A plain name selects a target whose parameter name (``rnn.weight_hh_l0``), alias, or
  module path (``rnn``) equals it, or whose module path lies under it (``encoder`` selects
  ``encoder.layer.0.fc``), or whose module's class has that name (``Linear``, ``LSTM``,
  ``GRU``, ``MultiheadAttention``: every layer of that class; ``compress layers`` lists them).
- ``re:PATTERN`` selects targets whose parameter name or module path the pattern matches
  in full (``re.fullmatch``), e.g. ``re:rnn\\.weight_hh_l\\d+``.

An empty ``targets`` list selects every target of a kind the pass supports. Every entry of
either list must match at least one target: a pattern that matches nothing is an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .capture import Target
from .errors import RecipeError, TargetError

__all__ = ["compile_pattern", "resolve_targets", "explain_selection"]


def compile_pattern(pattern: str, path: str):
    """Validate one entry; returns a predicate over targets. Bad regexes are RecipeErrors."""
    if not isinstance(pattern, str) or not pattern:
        raise RecipeError(path, f"expected a module path or 're:' regex, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as exc:
            raise RecipeError(path, f"invalid regular expression {pattern[3:]!r}: {exc}") from None
        return lambda t: any(regex.fullmatch(n) for n in (t.name, t.module_path, *t.aliases))
    return lambda t: (
        pattern in (t.name, t.module_path, *t.aliases, *t.module_classes)
        or t.module_path.startswith(pattern + ".")
    )


def resolve_targets(
    targets: Sequence[Target],
    include: Sequence[str],
    ignore: Sequence[str],
    kinds: Sequence[str],
    path: str,
) -> list[Target]:
    """The targets a pass applies to, in capture order.

    ``path`` locates the pass in the recipe (``passes[0]``) for error messages. A name that
    explicitly selects a target of a kind the pass does not support is an error too.
    """
    available = ", ".join(t.name for t in targets) or "(none)"
    if include:
        selected: list[Target] = []
        for i, pattern in enumerate(include):
            pred = compile_pattern(pattern, f"{path}.targets[{i}]")
            hit = [t for t in targets if pred(t)]
            if not hit:
                raise TargetError(f"{path}.targets[{i}]: {pattern!r} matches no layer; layers: {available}")
            wrong = [t for t in hit if t.kind not in kinds]
            if wrong and len(wrong) == len(hit):
                raise TargetError(
                    f"{path}.targets[{i}]: {pattern!r} selects {wrong[0].name} of kind {wrong[0].kind!r}; "
                    f"this pass supports {', '.join(kinds)}"
                )
            selected += [t for t in hit if t.kind in kinds and t not in selected]
    else:
        selected = [t for t in targets if t.kind in kinds]
    for i, pattern in enumerate(ignore):
        pred = compile_pattern(pattern, f"{path}.ignore[{i}]")
        if not any(pred(t) for t in targets):
            raise TargetError(f"{path}.ignore[{i}]: {pattern!r} matches no layer; layers: {available}")
        selected = [t for t in selected if not pred(t)]
    order = {t.name: i for i, t in enumerate(targets)}
    return sorted(selected, key=lambda t: order[t.name])


def _names(found: Sequence[Target], limit: int = 8) -> str:
    names = [t.name for t in found]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") or "nothing"


def explain_selection(
    targets: Sequence[Target],
    include: Sequence[str],
    ignore: Sequence[str],
    kinds: Sequence[str],
) -> str:
    """What each ``targets``/``ignore`` entry matched, in words (for a selection that came out empty)."""
    parts = []
    if include:
        for i, pattern in enumerate(include):
            hit = [t for t in targets if compile_pattern(pattern, f"targets[{i}]")(t)]
            usable = [t for t in hit if t.kind in kinds]
            text = f"targets[{i}] {pattern!r} matched {_names(usable)}"
            if len(usable) < len(hit):
                text += f" (and {_names([t for t in hit if t.kind not in kinds])} of a kind it does not support)"
            parts.append(text)
    else:
        parts.append(f"targets (empty) selected every layer of kind {', '.join(kinds)}: "
                     f"{_names([t for t in targets if t.kind in kinds])}")
    for i, pattern in enumerate(ignore):
        hit = [t for t in targets if compile_pattern(pattern, f"ignore[{i}]")(t)]
        parts.append(f"ignore[{i}] {pattern!r} removed {_names(hit)}")
    layers = ", ".join(f"{t.name} ({t.kind})" for t in targets) or "(none)"
    return "; ".join(parts) + f"; captured layers: {layers}"
