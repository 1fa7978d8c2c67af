"""Dependencies point one way: the contract the layout section of the README describes.

- ``solvers`` (pure mask math) and ``kernels`` (formats, ops, modules) import nothing of the
  project outside themselves but ``compressor.native_build`` (compile a C source on first use),
  a leaf module that imports nothing of the project;
- passes never import ``bench`` or ``cli``; the core never imports ``bench`` or ``cli`` either
  (``__main__`` is the entry point and sits on top);
- inside the mapped folders, project imports go through the ``compressor`` namespace, never the
  bare folder names;
- importing a leaf package does not import the pipeline (``compressor/__init__`` is lazy).

The imports are read from the source (ast), relative ones resolved through the
``package-dir`` mapping of pyproject.toml.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"compressor": "compressor", "passes": "compressor.passes", "solvers": "compressor.solvers",
           "kernels": "compressor.kernels", "recipes": "compressor.recipes"}
GROUPS = ("compressor.native_build",
          "compressor.solvers", "compressor.kernels", "compressor.passes", "compressor.bench", "compressor.models",
          "compressor.cli", "compressor.__main__")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _group(module: str) -> str:
    return next((g.split(".")[1] for g in GROUPS if module == g or module.startswith(g + ".")), "core")


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, file:line) for every project import."""
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_name(path)
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")[: len(package.split(".")) - node.level + 1]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    names = [target] + [f"{target}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found += [(module, n, where) for n in names if n.split(".")[0] in (*FOLDERS, "compressor")]
    return found


IMPORTS = _imports()
# what each group may import of the project besides itself
ALLOWED = {
    "native_build": set(),
    "solvers": {"native_build"},
    "kernels": {"native_build"},
    "passes": {"core", "solvers", "kernels", "native_build"},
    "core": {"solvers", "kernels", "passes", "models", "native_build"},
    "models": {"core", "kernels", "solvers", "native_build"},
}


@pytest.mark.parametrize("group", sorted(ALLOWED))
def test_dependencies_point_one_way(group):
    bad = [f"{where}: {src} imports {dst}" for src, dst, where in IMPORTS
           if _group(src) == group and dst.split(".")[0] == "compressor" and _group(dst) != group
           and _group(dst) not in ALLOWED[group]]
    assert not bad, "\n".join(bad)


def test_no_bare_folder_imports():
    bare = [f"{where}: {dst}" for _, dst, where in IMPORTS if dst.split(".")[0] in ("passes", "solvers", "kernels", "recipes")]
    assert not bare, "\n".join(bare)


def test_importing_a_leaf_does_not_import_the_pipeline():
    code = ("import sys, compressor.solvers, compressor.kernels; "
            "print(sorted(m for m in sys.modules if m in ('compressor.pipeline', 'compressor.passes', 'ortools', 'onnx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
