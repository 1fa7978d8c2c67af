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

# ``capture`` is a function and a submodule of the same name: bound here, so that importing the
# submodule (which sets the package attribute to the module) cannot hide the function. It needs torch only.
from .capture import CaptureResult, Target, capture  # noqa: E402

#: public name -> the module that defines it. Loaded on first use (PEP 562), so that importing a
#: leaf such as ``compressor.solvers`` or ``compressor.kernels`` does not import the pipeline, the
#: passes, ONNX and OR-Tools.
_EXPORTS = {
    "ArtifactError": "errors",
    "Backend": "swaps",
    "CompressionState": "pipeline",
    "CompressorError": "errors",
    "ModelLoadError": "errors",
    "ModelSpec": "loading",
    "Pipeline": "pipeline",
    "PipelineResult": "pipeline",
    "Recipe": "recipe",
    "RecipeError": "errors",
    "Replacement": "swaps",
    "ReplacementKind": "swaps",
    "Report": "report",
    "TargetError": "errors",
    "export_hf": "hf_export",
    "finalize": "masks",
    "load": "artifacts",
    "load_masks": "artifacts",
    "load_model": "loading",
    "load_recipe": "recipe",
    "parse_recipe": "recipe",
    "read_metadata": "artifacts",
    "read_report": "artifacts",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compressor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ArtifactError",
    "Backend",
    "CaptureResult",
    "CompressionState",
    "CompressorError",
    "ModelLoadError",
    "ModelSpec",
    "Pipeline",
    "PipelineResult",
    "Recipe",
    "RecipeError",
    "Replacement",
    "ReplacementKind",
    "Report",
    "Target",
    "TargetError",
    "capture",
    "export_hf",
    "finalize",
    "load",
    "load_masks",
    "load_model",
    "load_recipe",
    "parse_recipe",
    "read_metadata",
    "read_report",
]
