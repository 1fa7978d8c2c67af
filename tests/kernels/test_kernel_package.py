"""compressor.kernels is a leaf package: it imports nothing from compressor outside itself but the
leaf build helper ``compressor.native_build`` (which itself imports nothing of the project)."""

from __future__ import annotations

import ast
from pathlib import Path

import compressor.kernels as kernels

ALLOWED_OUTSIDE = ("compressor.native_build",)


def test_kernels_import_nothing_from_the_rest_of_compressor():
    bad = []
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # ``from ..x import y`` inside compressor.kernels is compressor.x
                base = "compressor.kernels" if node.level == 1 else "compressor" if node.level == 2 else ""
                names = [node.module or ""] if node.level == 0 else [f"{base}.{node.module}" if node.module else base]
            else:
                continue
            bad += [f"{path.name}: {n}" for n in names
                    if (n == "compressor" or n.startswith("compressor.")) and not n.startswith("compressor.kernels")
                    and n not in ALLOWED_OUTSIDE]
    assert bad == []


def test_the_build_helper_imports_nothing_of_the_project():
    import compressor.native_build as build

    tree = ast.parse(Path(build.__file__).read_text())
    project = [ast.dump(n) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("compressor"))]
    assert project == []
