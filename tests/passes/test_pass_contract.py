"""What the pipeline guarantees around every pass: errors name the recipe step, masks only shrink."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from rich.console import Console

import compressor
from compressor.errors import TargetError
from compressor.passes import PassConfig, PassResult, register_pass
from compressor.passes.registry import _REGISTRY
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())


@dataclass(frozen=True)
class _Config(PassConfig):
    pass


@pytest.fixture
def test_pass():
    """Register a pass for one test (removed again: the registry is global)."""
    names = []

    def register(name, fn, **flags):
        register_pass(name, _Config, **flags)(fn)
        names.append(name)

    yield register
    for name in names:
        _REGISTRY.pop(name)


def _run(load_fixture, *steps):
    passes = [{"pass": "unstructured_prune", "targets": ["fc1"], "sparsity": 0.5}] + [{"pass": s} for s in steps]
    return compressor.Pipeline(parse_recipe({"version": 1, "passes": passes})).run(load_fixture("mlp"), console=QUIET)


def test_a_pass_error_names_the_recipe_step(load_fixture, test_pass):
    def fails(state, config, targets):
        raise TargetError(f"layer {targets[0].name} cannot take this")

    test_pass("contract_fails", fails)
    with pytest.raises(TargetError, match=r"^passes\[1\] \(contract_fails\): layer fc1.weight cannot take this$"):
        _run(load_fixture, "contract_fails")


def test_a_bug_keeps_its_traceback_with_the_step(load_fixture, test_pass):
    def crashes(state, config, targets):
        raise ZeroDivisionError("oops")

    test_pass("contract_crashes", crashes)
    with pytest.raises(ZeroDivisionError) as info:
        _run(load_fixture, "contract_crashes")
    assert "raised in passes[1] (contract_crashes)" in getattr(info.value, "__notes__", [])


def test_masks_only_shrink_unless_the_pass_regrows(load_fixture, test_pass):
    def regrow(state, config, targets):
        t = next(t for t in targets if t.name == "fc1.weight")
        state.set_mask(t, torch.ones_like(state.mask(t)), intersect=False)  # every weight back
        return PassResult()

    test_pass("contract_regrows_silently", regrow)
    with pytest.raises(RuntimeError, match=r"passes\[1\] \(contract_regrows_silently\) brought back \d+ weights of fc1"):
        _run(load_fixture, "contract_regrows_silently")
    test_pass("contract_regrows_by_design", regrow, regrows=True)
    result = _run(load_fixture, "contract_regrows_by_design")
    assert bool(result.masks["fc1.weight"].all())
