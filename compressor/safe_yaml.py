"""Read YAML that someone else wrote (recipes) within fixed bounds.

``yaml.safe_load`` already refuses ``!!python`` tags, but it accepts three things that hurt a
user who runs a recipe they were sent: a file of a few hundred bytes whose aliases expand to
billions of values (the "billion laughs"), duplicate keys (the last one silently wins, so a
reviewer reads ``sparsity: 0.3`` while ``sparsity: 0.95`` runs), and files of any size. Here the
document is composed into YAML nodes first (linear in the file's size), checked, and only then
constructed into Python values.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import RecipeError

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_VALUES", "load_yaml"]

#: the largest recipe file read; shipped recipes are about 1 KB
MAX_YAML_BYTES = 1 << 20
#: the most values (scalars, lists and mappings) a document may hold with every alias expanded
MAX_YAML_VALUES = 100_000


def load_yaml(text: str, file: str | None = None) -> Any:
    """Parse ``text`` as one YAML document of plain data; RecipeError names what is wrong where."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise RecipeError("", f"larger than {MAX_YAML_BYTES // 1024} KiB; a recipe is a short file", file=file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, file)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise RecipeError("", f"not valid YAML: {' '.join(str(exc).split())[:300]}", file=file) from None
    except RecursionError:
        raise RecipeError("", "nested too deeply to be a recipe", file=file) from None
    finally:
        loader.dispose()


def _check(root: yaml.Node, file: str | None) -> None:
    """Refuse duplicate keys (with their recipe path), recursive aliases and documents whose
    aliases expand past :data:`MAX_YAML_VALUES` values. Iterative, and each node is visited once
    (an alias points at a node already seen), so the check costs as much as the text."""
    size: dict[int, int] = {}  # expanded value count per node, once its children are done
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    open_nodes: set[int] = set()
    while stack:
        node, path, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_YAML_VALUES:
                raise RecipeError(path, f"expands to more than {MAX_YAML_VALUES} values (YAML aliases); "
                                        "a recipe is a short file", file=file)
            continue
        if key in size:
            continue  # an alias of a node already checked
        if key in open_nodes:
            raise RecipeError(path, "a YAML alias refers to the node that contains it (recursive data)", file=file)
        open_nodes.add(key)
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                if isinstance(k, yaml.ScalarNode) and name != "<<":  # '<<' merges are YAML's own override
                    if name in seen:
                        where = f"{path}.{name}" if path else name
                        raise RecipeError(where, f"duplicate key (lines {seen[name] + 1} and {k.start_mark.line + 1}); "
                                                 "YAML would silently keep the last one", file=file)
                    seen[name] = k.start_mark.line
                stack.append((k, path, False))
                stack.append((v, f"{path}.{name}" if path else name, False))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{path}[{i}]", False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
