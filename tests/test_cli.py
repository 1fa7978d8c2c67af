"""The `compress` command end to end, as a user runs it.

Every case calls ``compressor.cli.main`` in-process (a subprocess per case paid a full torch
import, about 5 s each on 2 cores), with the working directory, streams and terminal width a
subprocess would have; tests/test_packaging.py runs the entry point itself (``python -m compressor``)
in fresh processes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]


def compress(*args, cwd=None):
    """``compress ARGS`` in this process: (returncode, stdout, stderr) as a subprocess would give them."""
    from compressor.cli import main

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    try:
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's own errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(before)
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_main_job_on_the_builtin_model(tmp_path):
    """The README's first command on the real recipe; perplexity on the first 4096 test tokens (the
    whole split, 23k, is the README's figure) keeps the run short, the rest is as a user runs it."""
    out = tmp_path / "art"
    proc = compress("--recipe", ROOT / "recipes" / "lstm-oneshot.yaml", "--out", out, "--eval-tokens", "4096")
    assert proc.returncode == 0, proc.stderr
    assert "perplexity: before" in proc.stdout and "rnn.weight_hh_l1" in proc.stdout
    assert {"model.safetensors", "recipe.resolved.yaml", "report.json"} <= set(os.listdir(out))
    # the main job's artifact includes the ONNX export, each graph checked in ONNX Runtime
    assert {"model.onnx", "rnn.step.onnx"} <= set(os.listdir(out))
    assert "onnx model.onnx: max abs error" in proc.stderr and "onnx rnn.step.onnx" in proc.stderr
    # a built-in model's graph takes any batch and length (the LSTM is one ONNX node, not 32 steps)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in sess.get_inputs()] == [["batch", "sequence"]]
    assert [o.shape for o in sess.get_outputs()] == [["batch", "sequence", 104]]  # not the example's 32
    assert sess.run(None, {sess.get_inputs()[0].name: np.zeros((3, 7), np.int64)})[0].shape[:2] == (3, 7)

    proc = compress("report", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"layers", "totals"} <= set(report)
    for row in report["layers"]:
        assert {"name", "shape", "pattern", "target_sparsity", "sparsity"} <= set(row)
    for graph in ("model.onnx", "rnn.step.onnx"):
        assert 0 <= report["metrics"][f"onnx_rel_error({graph})"]["after"] <= 1e-4
    # the main job's targets: at least half of the LSTM's weights removed for at most +10% perplexity
    lstm = [row for row in report["layers"] if row["name"].startswith("rnn.")]
    assert sum(row["sparsity"] * row["params"] for row in lstm) / sum(row["params"] for row in lstm) >= 0.5
    ppl = report["metrics"]["perplexity"]
    assert ppl["after"] <= 1.10 * ppl["before"]
    # the numbers in the report are the weights' own
    import compressor

    model = compressor.load(out)
    params = dict(model.named_parameters())
    for row in report["layers"]:
        assert row["sparsity"] == pytest.approx(float((params[row["name"]] == 0).float().mean()), abs=1e-6)

    table = compress("report", out)
    assert table.returncode == 0 and "total" in table.stdout
    assert "onnx_rel_error(rnn.step.onnx): " in table.stdout  # every view reads the {after: value} form

    again = compress("--recipe", ROOT / "recipes" / "lstm-oneshot.yaml", "--out", out)
    assert again.returncode != 0 and "exists" in again.stderr and "--force" in again.stderr


def test_user_factory_with_checkpoint(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from fixture_models import HERE, MLP

    state = {k: torch.randn_like(v) for k, v in MLP().state_dict().items()}
    ckpt = tmp_path / "mlp.safetensors"
    save_file(state, str(ckpt))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\npasses:\n  - pass: block_prune\n    block: [4, 4]\n    sparsity: 0.5\n    ignore: [head]\n")
    out = tmp_path / "art"
    proc = compress("--recipe", recipe, "--model", f"{HERE}:mlp", "--checkpoint", ckpt, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["pattern"] for r in report["layers"]] == ["block 4x4", "block 4x4", "dense"]
    assert report["capture"]["method"] == "fx"
    # the resolved recipe says what was compressed, though the recipe file names no model
    import yaml

    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["model"]["name"] == f"{HERE}:mlp" and resolved["model"]["checkpoint"] == str(ckpt)


@pytest.mark.parametrize("body,needle", [
    ("version: 1\npasses:\n  - pass: block_prune\n    blok: [4, 4]\n", "passes[0].blok"),
    ("version: 1\npasses:\n  - pass: block_prune\n    sparsity: 1.2\n", "passes[0].sparsity"),
    ("version: 1\npasses:\n  - pass: nm_prune\n    n: 4\n    m: 4\n", "passes[0].n"),
    ("version: 1\npasses:\n  - pass: nm_prune\n    targets: [encoder]\n", "matches no layer"),
])
def test_bad_recipes_fail_with_one_line_and_write_nothing(tmp_path, body, needle):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(body)
    out = tmp_path / "art"
    proc = compress("--recipe", recipe, "--out", out)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and [p for p in os.listdir(tmp_path) if p != "bad.yaml"] == []


def test_validate_and_errors(tmp_path):
    ok = compress("validate", *sorted((ROOT / "recipes").glob("*.yaml")))
    assert ok.returncode == 0 and ": ok" in ok.stdout
    listing = compress("validate", "--list")
    assert listing.returncode == 0 and "block_prune" in listing.stdout and "nm_prune" in listing.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npasses:\n  - pass: blok_prune\n")
    proc = compress("validate", bad)
    assert proc.returncode == 2 and "did you mean 'block_prune'" in proc.stderr
    missing = compress("--recipe", tmp_path / "none.yaml")
    assert missing.returncode == 2 and "recipe not found" in missing.stderr
    ckpt = compress("--recipe", ROOT / "recipes" / "lstm-oneshot.yaml", "--checkpoint", tmp_path / "x.safetensors",
                    "--out", tmp_path / "o")
    assert ckpt.returncode == 2 and "checkpoint not found" in ckpt.stderr and not (tmp_path / "o").exists()
    shape = compress("--recipe", ROOT / "recipes" / "lstm-oneshot.yaml", "--input", "2xq", "--out", tmp_path / "o")
    assert shape.returncode == 2 and "--input[0]" in shape.stderr
    report = compress("report", tmp_path)
    assert report.returncode == 2 and "not a compressor artifact" in report.stderr
    nothing = compress("validate")
    assert nothing.returncode == 2 and nothing.stderr.strip() == (
        "compress: error: validate: name at least one recipe file (or pass --list)")
    unknown = compress("frobnicate")
    assert unknown.returncode == 2 and "unknown subcommand 'frobnicate'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
