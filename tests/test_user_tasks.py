"""User tasks (`name: module:function`): imported from the working directory when the recipe loads,
the factory's signature checked then, the returned object's methods checked before any pass changes a
layer; each mistake is one line naming the recipe path. The README's example task file is run as written."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import compressor
from compressor.cli import main as cli_main
from compressor.errors import CompressorError, RecipeError
from compressor.pipeline import task_uses
from compressor.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
QUIET = Console(file=io.StringIO())


def readme_task() -> str:
    """The example task file of the README's recipe reference."""
    blocks = re.findall(r"```python\n(# mytask\.py.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory that is not on sys.path (the `compress` script's situation)."""
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path) not in sys.path and "" not in sys.path and "." not in sys.path
    names = ("mytask", "badtask", "probe")
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in names:  # the modules this test imported from its directory go with it
        sys.modules.pop(name, None)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_the_readme_task_imports_from_the_working_directory_and_runs(workdir, load_fixture, capsys):
    (workdir / "mytask.py").write_text(readme_task())
    recipe = workdir / "r.yaml"
    recipe.write_text('version: 1\npasses:\n'
                      '  - {pass: nm_convert, reconstruct: lstsq, rows: 64, targets: [fc1],\n'
                      '     calibration: {name: "mytask:make", batch_size: 16}}\n'
                      '  - {pass: finetune, train: {steps: 4, lr: 0.01, eval_every: 4, checkpoint_every: 0,\n'
                      '                             task: {name: "mytask:make", batch_size: 8, seed: 3}}}\n')
    path_before = list(sys.path)
    code, err = run_cli(capsys, "validate", recipe)
    assert code == 0, err
    assert sys.path == path_before  # the working directory was on sys.path for the import only
    spec = load_fixture("mlp")
    dense = {k: v.clone() for k, v in spec.model.state_dict().items()}
    log = Console(file=io.StringIO(), width=200)  # not a terminal: one line per pass
    result = compressor.Pipeline(compressor.load_recipe(recipe)).run(spec, console=log)
    lines = log.file.getvalue().splitlines()
    assert any(ln.startswith("pass nm_convert: 1 layer(s) in ") for ln in lines)
    assert any(ln.startswith("pass finetune: trained, masks held in ") for ln in lines)  # not "0 layer(s)"
    assert result.report.passes[1]["metrics"]["history"]["eval"][-1]["step"] == 4
    logged = result.report.passes[1]["metrics"]["history"]["eval"][-1]["mse"]
    # by hand: the MSE to the dense model on the evaluation batch (seed 3, step 10**9, 8 rows of 20)
    teacher = load_fixture("mlp").model
    teacher.load_state_dict(dense)
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(3 * 1_000_003 + 10**9))
    with torch.no_grad():
        assert logged == pytest.approx(float(F.mse_loss(result.model(x), teacher(x))), rel=1e-5)
    w = result.model.fc1.weight
    assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2  # the calibration pass ran: 2:4


def test_a_task_file_path_works_too(workdir, load_fixture):
    (workdir / "tasks").mkdir()
    (workdir / "tasks" / "mine.py").write_text(readme_task())
    step = {"pass": "nm_convert", "reconstruct": "lstsq", "rows": 32, "targets": ["fc1"],
            "calibration": {"name": "tasks/mine.py:make", "batch_size": 8}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(load_fixture("mlp"), console=QUIET)
    assert result.report.passes[0]["metrics"]["fc1.weight"]["reconstruction_error_after"] >= 0


FACTORY_MISTAKES = [
    ("nosuchmodule:make", None, "cannot import 'nosuchmodule'"),
    ("badtask:make", "def other(config, spec, teacher):\n    pass\n", "'make' is not a callable in badtask"),
    ("badtask:make", "def make(config):\n    pass\n", "make(config) cannot be called as make(config, spec, teacher)"),
    ("badtask:make", "raise RuntimeError('broken on import')\n", "importing badtask failed: RuntimeError: broken on import"),
    ("missing.py:make", None, "file not found"),
]


@pytest.mark.parametrize("name,source,match", FACTORY_MISTAKES)
def test_a_bad_task_reference_fails_when_the_recipe_loads(workdir, capsys, name, source, match):
    if source is not None:
        (workdir / "badtask.py").write_text(source)
    recipe = workdir / "r.yaml"
    recipe.write_text(f'version: 1\npasses:\n  - {{pass: nm_convert, calibration: {{name: "{name}"}}}}\n')
    with pytest.raises(RecipeError, match=re.escape(match)) as info:
        compressor.load_recipe(recipe)
    assert info.value.path == "passes[0].calibration.name"
    code, err = run_cli(capsys, "validate", recipe)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "passes[0].calibration.name" in err
    # `compress` stops before it loads the model (the factory below would leave a marker)
    (workdir / "model.py").write_text("from pathlib import Path\nimport torch\n"
                                      "def make():\n    Path('loaded').write_text('x')\n    return torch.nn.Linear(4, 4)\n")
    code, err = run_cli(capsys, "--recipe", recipe, "--model", "model.py:make", "--out", workdir / "art")
    assert code == 2 and match in err and not (workdir / "loaded").exists() and not (workdir / "art").exists()


PROBE = """
import torch

class Probe:
    def batch(self, step, rank=0, world=1):
        return (torch.randn(16, 20, generator=torch.Generator().manual_seed(step)),)
{extra}
def make(config, spec, teacher):
    return Probe()
"""
INPUTS = "    def inputs(self, batch):\n        return batch\n"
LOSS = "    def loss(self, model, batch):\n        return model(*batch).pow(2).mean()\n"
EVALUATE = "    def evaluate(self, model):\n        return {}\n"


@pytest.mark.parametrize("methods,step,missing", [
    ("", {"pass": "nm_convert", "reconstruct": "lstsq", "calibration": {"name": "probe:make"}},
     "passes[0].calibration.name: task 'probe:make' returned Probe, which has no inputs(batch) method"),
    (INPUTS + EVALUATE, {"pass": "finetune", "train": {"steps": 2, "task": {"name": "probe:make"}}},
     "passes[0].train.task.name: task 'probe:make' returned Probe, which has no loss(model, batch) method"),
    (INPUTS + LOSS, {"pass": "finetune", "train": {"steps": 2, "task": {"name": "probe:make"}}},
     "which has no evaluate(model) method"),
])
def test_a_task_without_a_method_its_use_calls_is_one_line_before_any_layer_changes(
        workdir, load_fixture, methods, step, missing):
    (workdir / "probe.py").write_text(PROBE.format(extra=methods))
    spec = load_fixture("mlp")
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    first = {"pass": "nm_prune", "targets": ["fc2"]}  # would change fc2 if the check came after it
    with pytest.raises(CompressorError) as info:
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [first, step]})).run(spec, console=QUIET)
    message = str(info.value)
    assert missing.replace("passes[0]", "passes[1]") in message and "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in spec.model.state_dict().items())


def test_only_the_methods_a_use_calls_are_required(workdir, load_fixture):
    """A calibration-only task needs no loss or evaluate; a training task without evaluation no evaluate."""
    (workdir / "probe.py").write_text(PROBE.format(extra=INPUTS + LOSS))
    steps = [{"pass": "nm_convert", "reconstruct": "lstsq", "rows": 32, "targets": ["fc1"],
              "calibration": {"name": "probe:make"}},
             {"pass": "finetune", "train": {"steps": 2, "eval_every": 0, "checkpoint_every": 0,
                                            "task": {"name": "probe:make", "seed": 1}}}]
    spec = load_fixture("mlp")
    before = spec.model.fc2.weight.detach().clone()
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": steps})).run(spec, console=QUIET)
    assert len(result.report.passes[1]["metrics"]["history"]["loss"]) == 2
    assert not torch.equal(result.model.fc2.weight, before)  # trained on the task's loss


def test_which_methods_each_use_of_a_task_calls():
    recipe = parse_recipe({"version": 1, "passes": [
        {"pass": "sparsegpt", "calibration": {"name": "lm"}},
        {"pass": "finetune", "train": {"eval_every": 0}},
        {"pass": "finetune"},
        {"pass": "dynamic_gate", "calibration_batches": 2},
        {"pass": "dynamic_gate", "calibration_batches": 0}]})
    needs = [[(where, methods) for _, where, methods in task_uses(p.config, f"passes[{i}]")]
             for i, p in enumerate(recipe.passes)]
    assert needs == [
        [("passes[0].calibration", ("batch", "inputs"))],
        [("passes[1].train.task", ("batch", "loss"))],
        [("passes[2].train.task", ("batch", "loss", "evaluate"))],
        [("passes[3].train.task", ("batch", "loss", "evaluate", "inputs"))],
        [("passes[4].train.task", ("batch", "loss", "evaluate"))],
    ]
