"""compressor: a PyTorch model-compression toolkit.

Block, N:M and transposable N:M pruning, input-dependent block gating, sparse kernels that
are really faster, and ONNX export that stays fast. Quick start::

    import compressor
    recipe = compressor.load_recipe("recipes/lstm-oneshot.yaml")
    spec = compressor.load_model("lstm-lm")            # or "my_model.py:make_model" + checkpoint
    result = compressor.Pipeline(recipe).run(spec, out="runs/demo")
    model = compressor.load("runs/demo")               # the compressed nn.Module
"""

from __future__ import annotations

__version__ = "0.1.0"

from .artifacts import load, load_masks, read_metadata, read_report
from .capture import CaptureResult, Target, capture
from .errors import ArtifactError, CompressorError, ModelLoadError, RecipeError, TargetError
from .loading import ModelSpec, load_model
from .masks import finalize
from .pipeline import CompressionState, Pipeline, PipelineResult
from .recipe import Recipe, load_recipe, parse_recipe
from .report import Report

__all__ = [
    "ArtifactError",
    "CaptureResult",
    "CompressionState",
    "CompressorError",
    "ModelLoadError",
    "ModelSpec",
    "Pipeline",
    "PipelineResult",
    "Recipe",
    "RecipeError",
    "Report",
    "Target",
    "TargetError",
    "capture",
    "finalize",
    "load",
    "load_masks",
    "load_model",
    "load_recipe",
    "parse_recipe",
    "read_metadata",
    "read_report",
]
