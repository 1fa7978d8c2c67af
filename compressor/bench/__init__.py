"""Benchmarks behind ``compress bench NAME``.

Benchmarks are not tests: they run dense and sparse side by side in one process, interleaved,
report medians and ratios, and write JSON. Each benchmark module exposes
``add_arguments(parser)`` and ``run(args) -> int`` and is imported only when asked for.
"""

from __future__ import annotations

import importlib

__all__ = ["BENCHMARKS", "load_benchmark"]

#: name -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "solvers": ("compressor.bench.solvers", "N:M and transposable N:M mask solvers: time and kept magnitude"),
    "kernels": ("compressor.bench.kernels", "sparse kernels vs dense (torch and ONNX Runtime), beside scipy BSR and MKL"),
    "nm": ("compressor.bench.nm", "plain vs transposable N:M conversion, with and without reconstruction"),
    "model": ("compressor.bench.model", "an artifact's compressed model vs its dense counterpart (torch, steps, ORT; DeepSparse)"),
    "storage": ("compressor.bench.storage", "artifact bytes vs the dense checkpoint, with the issue targets; load time and peak RSS"),
    "oneshot": ("compressor.bench.oneshot", "one-shot pruning on the LM: magnitude, wanda, nm_convert, sparsegpt"),
    "hf": ("compressor.bench.hf", "N:M on the pretrained all-MiniLM-L6-v2 encoder: embedding cosine to dense, time"),
    "quality": ("compressor.bench.quality", "perplexity of dense vs block-sparse fine-tuning on the LM (Narang et al.)"),
}


def load_benchmark(name: str):
    """Import the module of benchmark ``name`` (raises KeyError for an unknown name)."""
    module, _ = BENCHMARKS[name]
    return importlib.import_module(module)
