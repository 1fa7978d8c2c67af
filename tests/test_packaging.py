"""Run from the repository root (root on sys.path), the folder kernels/ must not shadow Hugging Face's `kernels`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_from_root(code: str) -> subprocess.CompletedProcess:
    # -c puts the working directory (the root) first on sys.path, as python -m pytest / python -m compressor do.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("first", ["kernels", "compressor.kernels"])
def test_bare_kernels_is_hugging_face_and_compressor_kernels_still_imports(first):
    try:
        hf = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed")
    second = "compressor.kernels" if first == "kernels" else "kernels"
    proc = run_from_root(f"""
import importlib, json, os, sys
assert os.path.realpath(sys.path[0] or ".") == os.getcwd()
importlib.import_module({first!r}); importlib.import_module({second!r})
kernels = importlib.import_module("kernels")  # the bare name on purpose: it must be Hugging Face's package
import compressor.kernels
from transformers.integrations import hub_kernels  # does 'from kernels import ...' when kernels is installed
print(json.dumps({{"kernels": kernels.__file__, "compressor.kernels": compressor.kernels.__file__,
                  "BlockSparseLinear": hasattr(compressor.kernels, "BlockSparseLinear")}}))
""")
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(files["kernels"]).resolve() == Path(hf.locate_file("kernels/__init__.py")).resolve()
    assert Path(files["compressor.kernels"]).resolve() == ROOT / "kernels" / "__init__.py"
    assert files["BlockSparseLinear"]


def test_bare_kernels_without_another_package_says_to_import_compressor_kernels():
    # Hide site-packages, so the only other 'kernels' on sys.path is the test folder tests/kernels (a bare
    # namespace folder, which must not be taken for the real package).
    proc = run_from_root("""
import sys
sys.path[:] = [p for p in sys.path if "-packages" not in p] + ["tests"]
try:
    kernels = __import__("kernels")  # the bare name on purpose (see above)
except ModuleNotFoundError as e:
    print(e.name, "|", e)
else:
    print("imported", kernels)
""")
    assert proc.returncode == 0, proc.stderr
    name, message = proc.stdout.strip().split(" | ", 1)
    assert name == "kernels"
    assert "must be imported as compressor.kernels" in message


def test_python_m_compressor_help_from_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "compressor", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--recipe" in proc.stdout


def test_ci_runs_the_readme_command_and_every_install_is_pinned():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv && ")]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and ci == [commands[1]]
    for command in commands:
        installs = [part for part in command.split("&&") if "pip install" in part]
        assert len(installs) == 2 and all(part.strip().endswith(" -c constraints.txt") for part in installs), command
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "torch==2.13.0" in pins  # no +cpu label: it must agree with 'pip install torch==2.13.0' on any index
    assert all("==" in pin and "+" not in pin and not pin.lower().startswith("compressor") for pin in pins)
