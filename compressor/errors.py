"""Exceptions for bad user input. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

__all__ = ["CompressorError", "RecipeError", "ModelLoadError", "TargetError", "ArtifactError"]


class CompressorError(Exception):
    """Base class of every error caused by user input (recipe, arguments, files, model)."""


class RecipeError(CompressorError, ValueError):
    """A recipe value or key is invalid. ``path`` locates it, e.g. ``passes[1].block``."""

    def __init__(self, path: str, message: str, file: str | None = None):
        self.path = path
        self.message = message
        self.file = file
        where = ": ".join(part for part in (file, path) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ModelLoadError(CompressorError):
    """A model or checkpoint could not be loaded safely or does not match."""


class TargetError(CompressorError):
    """A target pattern matched nothing, or a layer cannot take the requested pattern."""


class ArtifactError(CompressorError):
    """An artifact directory is missing, incomplete, or would be overwritten."""
