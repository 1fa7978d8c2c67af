"""What the pipeline guarantees around every pass: errors name the recipe step, masks only shrink,
results are typed LayerUpdates of the pass's own targets, merged into the report rows field by field."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from rich.console import Console

import compressor
from compressor.errors import TargetError
from compressor.patterns import Block, Unstructured
from compressor.passes import LayerUpdate, PassConfig, PassResult, register_pass
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


@pytest.mark.parametrize("result,message", [
    ({"fc2.weight": {"pattern": Unstructured(), "target_sparsity": 0.5}},
     r"passes\[1\] \(contract_malformed\) reported a dict for layer fc2.weight, not a LayerUpdate"),
    ({"no.such.weight": LayerUpdate(kernel="dense")},
     r"passes\[1\] \(contract_malformed\) reported layer 'no.such.weight', which is not one of its targets"),
    ({"fc1.weight": LayerUpdate(kernel="dense")},  # a captured layer, but the pass was not given it
     r"passes\[1\] \(contract_malformed\) reported layer 'fc1.weight', which is not one of its targets"),
    (None, r"passes\[1\] \(contract_malformed\) returned NoneType, not a PassResult"),
])
def test_a_malformed_result_is_refused_naming_the_step_and_layer(load_fixture, test_pass, result, message):
    def malformed(state, config, targets):
        return result if result is None else PassResult(layers=result)

    test_pass("contract_malformed", malformed)
    passes = [{"pass": "unstructured_prune", "targets": ["fc1"], "sparsity": 0.5},
              {"pass": "contract_malformed", "targets": ["fc2"]}]
    with pytest.raises(RuntimeError, match=message):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": passes})).run(load_fixture("mlp"), console=QUIET)


@pytest.mark.parametrize("fields,message", [
    ({"pattern": {"kind": "unstructured"}, "target_sparsity": 0.5}, "pattern must be a Pattern"),
    ({"pattern": Unstructured()}, "pattern and target_sparsity come together"),
    ({"pattern": Unstructured(), "target_sparsity": 1.5}, r"target_sparsity must be a number in \[0, 1\]"),
    ({"notes": "one note"}, "notes must be a sequence of strings"),
    ({"speedup": "2x"}, "speedup must be a number"),
    ({"compressed_flops": 1.5}, "compressed_flops must be a non-negative int"),
    ({"block_keep_frequency": [0.5, 0.5]}, "block_keep_frequency must be a list of lists"),
])
def test_a_layer_update_checks_its_fields_and_the_error_names_the_step(load_fixture, test_pass, fields, message):
    with pytest.raises(TypeError, match=message):
        LayerUpdate(**fields)

    def builds_it(state, config, targets):
        return PassResult(layers={targets[0].name: LayerUpdate(**fields)})

    test_pass("contract_bad_update", builds_it)
    with pytest.raises(TypeError, match=message) as info:
        _run(load_fixture, "contract_bad_update")
    assert "raised in passes[1] (contract_bad_update)" in getattr(info.value, "__notes__", [])


def test_updates_merge_into_the_report_rows_field_by_field(load_fixture, test_pass):
    """Fields an update leaves None keep the earlier pass's value, notes accumulate in pass order, and
    the measured figures a pass gives replace the row's own; every other layer keeps its measured row."""
    pattern = Block(4, 4)

    def first(state, config, targets):
        return PassResult(layers={"fc2.weight": LayerUpdate(pattern, 0.25, kernel="k1", speedup=1.5, notes=["a"],
                                                            compressed_flops=123, block_keep_frequency=[[0.5, 1.0]])})

    def second(state, config, targets):
        return PassResult(layers={"fc2.weight": LayerUpdate(notes=("b",))}, skipped={"head.weight": "not mine"})

    test_pass("contract_first", first)
    test_pass("contract_second", second)
    passes = [{"pass": "unstructured_prune", "targets": ["fc1"], "sparsity": 0.5},
              {"pass": "contract_first", "targets": ["fc2"]}, {"pass": "contract_second", "targets": ["fc2", "head"]}]
    spec = load_fixture("mlp")
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": passes})).run(spec, console=QUIET)
    rows = {r.name: r for r in result.report.layers}
    fc2 = rows["fc2.weight"]
    assert (fc2.pattern_spec, fc2.target_sparsity, fc2.kernel, fc2.speedup) == (pattern.to_dict(), 0.25, "k1", 1.5)
    assert (fc2.notes, fc2.passes) == (["a", "b"], ["contract_first", "contract_second"])
    assert (fc2.compressed_flops, fc2.block_keep_frequency) == (123, [[0.5, 1.0]])
    assert rows["head.weight"].notes == ["contract_second skipped: not mine"] and rows["head.weight"].passes == []
    weights = dict(spec.model.named_parameters())
    for name in ("fc1.weight", "head.weight"):  # measured from the final weights: FLOPs of the non-zeros
        row, nonzero = rows[name], int((weights[name] != 0).sum())
        assert (row.compressed_flops, row.block_keep_frequency, row.kernel) == (2 * nonzero, None, None)
    assert rows["fc1.weight"].sparsity == pytest.approx(0.5, abs=1 / weights["fc1.weight"].numel())


def test_every_pass_file_registers_its_passes_and_only_they_are_loaded():
    """The folder is the list of passes: each public module of passes/ registers at least one pass
    (through its decorator, the one registration) and every built-in pass comes from one of them."""
    import pkgutil
    from pathlib import Path

    import compressor.passes as passes
    from compressor.passes import available_passes

    folder = Path(passes.__file__).parent
    public = {i.name for i in pkgutil.iter_modules([str(folder)]) if not i.name.startswith("_") and i.name != "registry"}
    builtin = {name: spec for name, spec in available_passes().items() if spec.fn.__module__.startswith("compressor.passes.")}
    homes = {spec.fn.__module__.rsplit(".", 1)[1] for spec in builtin.values()}
    assert homes == public  # no file without a pass, no pass from elsewhere in the folder
    assert {"nm_convert", "sparsegpt", "wanda", "swap_kernels", "dynamic_gate"} <= set(builtin)
