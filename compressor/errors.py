"""Exceptions for bad user input. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import reprlib

__all__ = ["CompressorError", "RecipeError", "ModelLoadError", "TargetError", "ArtifactError", "short", "first_line"]

#: the longest message an error carries: a value a user (or an attacker) wrote is quoted, not copied
MAX_MESSAGE = 500


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error quotes a short prefix of a bad value.

    :mod:`reprlib` bounds the work too: a recipe made of YAML aliases can be a tiny file whose
    value would print as gigabytes with plain ``repr``."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxlevel = limit, limit, 6, 6, 6, 2
    try:
        text = r.repr(value)
    except Exception:  # a user object whose __repr__ fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``"Type: first line of the message"`` of ``exc``, the message cut to ``limit`` characters: how
    an error raised inside the user's model or a library is quoted in one line (an empty message
    gives just the type; a traceback's text is never copied whole)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


class CompressorError(Exception):
    """Base class of every error caused by user input (recipe, arguments, files, model)."""


class RecipeError(CompressorError, ValueError):
    """A recipe value or key is invalid. ``path`` locates it, e.g. ``passes[1].block``."""

    def __init__(self, path: str, message: str, file: str | None = None):
        self.path = path
        self.message = message
        self.file = file
        where = ": ".join(part for part in (file, path[:200]) if part)
        text = f"{where}: {message}" if where else message
        super().__init__(text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "...")


class ModelLoadError(CompressorError):
    """A model or checkpoint could not be loaded safely or does not match."""


class TargetError(CompressorError):
    """A target pattern matched nothing, or a layer cannot take the requested pattern."""


class ArtifactError(CompressorError):
    """An artifact directory is missing, incomplete, or would be overwritten."""
