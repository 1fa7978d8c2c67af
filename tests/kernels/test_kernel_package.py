"""compressor.kernels is a leaf package: it imports nothing from compressor outside itself."""

from __future__ import annotations

import ast
from pathlib import Path

import compressor.kernels as kernels


def test_kernels_import_nothing_from_the_rest_of_compressor():
    bad = []
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.name}: {n}" for n in names
                    if (n == "compressor" or n.startswith("compressor.")) and not n.startswith("compressor.kernels")]
    assert bad == []
