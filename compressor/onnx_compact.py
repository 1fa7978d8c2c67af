"""Smaller ONNX files for pruned weights, with no change to what ONNX Runtime runs.

A pruned weight exported as a plain initializer keeps every zero: ``model.onnx`` was as large as
the dense model. ONNX's own ``sparse_initializer`` needs int64 indices (12 bytes per kept fp32
value), larger than dense below two-thirds sparsity. Instead :func:`compact_initializers`
stores such a weight as a bitmask (one bit per entry, LSB first) and its kept values, and
inserts a few standard ops that rebuild the dense tensor::

    bits --Unsqueeze, BitShift(0..7), BitwiseAnd 1, Reshape, Slice--> mask
    positions = CumSum(mask) - 1;  W = Reshape(Where(mask, Gather(values, positions), 0), shape)

Every input of that subgraph is an initializer, so ONNX Runtime's constant folding (on at its
default optimisation level) evaluates it once when the session is created: the session holds
the same dense tensor and runs exactly as fast as before. At 50% zeros the file stores about
0.53 of the dense bytes. Needs opset 18 or newer (BitwiseAnd); older graphs are left as they are.

:func:`expand_initializers` is the inverse: plain zero-filled initializers again, for engines that
read the weights themselves instead of folding constants (DeepSparse looks for zeros in them).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_ELEMENTS", "MIN_ZEROS", "compact_initializers", "expand_initializers"]

#: only tensors at least this large are worth a subgraph
MIN_ELEMENTS = 1024
#: only tensors with at least this fraction of zeros (the bitmask costs 1/32 of fp32 bytes)
MIN_ZEROS = 0.2
#: names of the unpacking nodes' outputs and shared constants
PREFIX = "compressor_unpack"
#: what each compacted initializer NAME leaves in the graph: NAME + each suffix
_PARTS = (".bits", ".values", ".numel", ".shape", ".zero")


def compact_initializers(model) -> dict:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place; returns {initializer: (dense bytes, stored bytes)}."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 18:
        return {}
    graph = model.graph
    consts = {"shifts": np.arange(8, dtype=np.uint8), "one": np.array(1, dtype=np.uint8),
              "axis1": np.array([1], dtype=np.int64), "flat": np.array([-1], dtype=np.int64),
              "start": np.array([0], dtype=np.int64), "step": np.array(1, dtype=np.int64),
              "axis0": np.array(0, dtype=np.int64)}
    prefix = PREFIX
    nodes, kept_inits, added, stats = [], [], [], {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        mask = array != 0
        if (array.dtype.kind != "f" or array.size < MIN_ELEMENTS or not mask.any()
                or 1 - mask.mean() < MIN_ZEROS):
            kept_inits.append(init)
            continue
        name = init.name
        flat_mask = mask.reshape(-1)
        bits = np.packbits(flat_mask, bitorder="little")
        values = array.reshape(-1)[flat_mask]
        added += [numpy_helper.from_array(bits, f"{name}.bits"), numpy_helper.from_array(values, f"{name}.values"),
                  numpy_helper.from_array(np.array([array.size], dtype=np.int64), f"{name}.numel"),
                  numpy_helper.from_array(np.array(array.shape, dtype=np.int64), f"{name}.shape"),
                  numpy_helper.from_array(np.zeros((), dtype=array.dtype), f"{name}.zero")]
        t = f"{prefix}.{name}"  # intermediate names
        nodes += [
            helper.make_node("Unsqueeze", [f"{name}.bits", f"{prefix}.axis1"], [f"{t}.b2"]),
            helper.make_node("BitShift", [f"{t}.b2", f"{prefix}.shifts"], [f"{t}.shifted"], direction="RIGHT"),
            helper.make_node("BitwiseAnd", [f"{t}.shifted", f"{prefix}.one"], [f"{t}.bit"]),
            helper.make_node("Reshape", [f"{t}.bit", f"{prefix}.flat"], [f"{t}.padded"]),
            helper.make_node("Slice", [f"{t}.padded", f"{prefix}.start", f"{name}.numel"], [f"{t}.bits01"]),
            helper.make_node("Cast", [f"{t}.bits01"], [f"{t}.mask"], to=TensorProto.BOOL),
            helper.make_node("Cast", [f"{t}.bits01"], [f"{t}.count"], to=TensorProto.INT64),
            helper.make_node("CumSum", [f"{t}.count", f"{prefix}.axis0"], [f"{t}.cumsum"]),
            helper.make_node("Sub", [f"{t}.cumsum", f"{prefix}.step"], [f"{t}.position"]),
            helper.make_node("Gather", [f"{name}.values", f"{t}.position"], [f"{t}.gathered"], axis=0),
            helper.make_node("Where", [f"{t}.mask", f"{t}.gathered", f"{name}.zero"], [f"{t}.dense"]),
            helper.make_node("Reshape", [f"{t}.dense", f"{name}.shape"], [name]),
        ]
        stats[name] = (array.nbytes, bits.nbytes + values.nbytes)
    if not stats:
        return {}
    added += [numpy_helper.from_array(v, f"{prefix}.{k}") for k, v in consts.items()]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + added)
    # the unpacking nodes come first: every node after them may read the rebuilt weights
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    onnx.checker.check_model(model)
    return stats


def expand_initializers(model) -> list[str]:
    """Undo :func:`compact_initializers` on ``model`` (an ``onnx.ModelProto``) in place: every weight
    stored as bitmask + kept values becomes a plain (zero-filled) initializer again and the
    unpacking nodes go. Returns the names of the rebuilt initializers (empty for a graph that was
    never compacted)."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    rebuilt = {}
    for name in list(inits):
        base = name[: -len(".bits")] if name.endswith(".bits") else None
        if base is None or not all(base + part in inits for part in _PARTS):
            continue
        bits, values, numel, shape = (numpy_helper.to_array(inits[base + p]) for p in _PARTS[:4])
        mask = np.unpackbits(bits, bitorder="little")[: int(numel[0])].astype(bool)
        if int(mask.sum()) != values.size:
            raise ValueError(f"{base}: the bitmask keeps {int(mask.sum())} entries, the graph stores {values.size} values")
        dense = np.zeros(mask.size, dtype=values.dtype)
        dense[mask] = values
        rebuilt[base] = numpy_helper.from_array(dense.reshape(shape), base)
    if not rebuilt:
        return []
    dropped = {base + part for base in rebuilt for part in _PARTS}
    nodes = [n for n in graph.node if not any(_unpacks(o, rebuilt) for o in n.output)]
    used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer
            if i.name not in dropped and not (i.name.startswith(PREFIX + ".") and i.name not in used)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + list(rebuilt.values()))
    onnx.checker.check_model(model)
    return sorted(rebuilt)


def _unpacks(output: str, rebuilt: dict) -> bool:
    """Whether ``output`` is the rebuilt weight or an intermediate of its unpacking subgraph."""
    return output in rebuilt or any(output.startswith(f"{PREFIX}.{base}.") for base in rebuilt)
