"""Shared fixtures for the foundation tests (tiny models live in fixture_models.py)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

# One intra-op thread per test process, and through the environment per process a test starts
# (a CLI run, torchrun's ranks): the tests' models and batches are tiny, so a second thread buys
# nothing, and on a busy 2-core machine OpenMP's fork/join waits for a descheduled thread on every
# op (measured: a training step of the fixture LSTM 0.25 s with 2 threads, 0.006 s with 1).
# Tests of threading set their own counts (bench --threads, the native kernel's thread test);
# OMP_NUM_THREADS set outside (e.g. by CI) is left as it is.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _cache_torchlib_registry() -> None:
    """Build the ONNX exporter's torchlib registry once per test process, not once per export.

    ``torch.onnx.export(dynamo=True)`` rebuilds the registry of ~500 onnxscript functions on every
    call (re-parsing each function's source): about 1 s per export, most of an export of the small
    modules the tests use. The registry depends only on the opset version, so each call gets a
    copy of the one built first (its own lists, as the exporter may register custom translations
    into it). Test-only: what is exported and checked is unchanged.
    """
    try:
        from torch.onnx._internal.exporter import _registration
        build = _registration.ONNXRegistry.from_torchlib.__func__
    except (ImportError, AttributeError):  # another torch: run without the cache
        return
    if getattr(build, "_compressor_tests_cached", False):
        return
    built: dict = {}

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(cls, *args, **kwargs)
        registry = copy.copy(built[key])
        registry.functions = {target: list(metas) for target, metas in built[key].functions.items()}
        return registry

    from_torchlib._compressor_tests_cached = True
    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)


_torch_onnx_export = torch.onnx.export


def _export_with_cached_registry(*args, **kwargs):
    _cache_torchlib_registry()  # on the first export: importing the exporter costs ~2 s
    return _torch_onnx_export(*args, **kwargs)


torch.onnx.export = _export_with_cached_registry


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def load_fixture():
    """Load a fixture model through the real loader: load_fixture("mlp") -> ModelSpec."""
    from fixture_models import ref

    from compressor.loading import load_model

    def load(name: str, checkpoint=None):
        return load_model(ref(name), checkpoint)

    return load
