#!/usr/bin/env python3
"""Which standard-ONNX formulation of a balanced block-sparse GEMV does ONNX Runtime run fastest?

    python scripts/ort_block_formulations.py [--keep 13] [--threads 2] [--rounds 40]

An experiment behind the ``onnx`` rows of BENCHMARKS.md, not part of the toolkit. It builds, for a
4096 x 4096 weight with 32 x 32 blocks and ``--keep`` kept blocks per block row (13 of 128 = 90%
sparse), one hand-made graph per formulation, each fed by the same Gather of the kept input
blocks, and times them against a dense MatMul on a constant 2-D weight (which ORT pre-packs):

- ``bmm``: MatMul (R, 1, K) x (R, K, 32): the layout our exporter emits;
- ``gemv``: the other orientation, MatMul (R, 32, K) x (R, K, 1);
- ``conv``: a grouped 1x1 Conv, one group per block row (ORT may lay it out as NCHWc);
- ``mulred``: Mul then ReduceSum over K;
- ``split``: one MatMul per block row with a constant 2-D weight each (pre-packed), then Concat;
- ``bmm-w16`` / ``bmm-w8``: ``bmm`` with every block row's 32 output columns split into 2 or 4
  narrower MatMuls of the same gathered input (R*2 or R*4 GEMVs of width 16 or 8).

Every session is checked against the dense product first. Four weight copies rotate, the order of
the formulations is shuffled each round, and each figure is the median over rounds of the median
of the four copies' calls.
"""

import argparse
import random
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

N, BS = 4096, 32
R = C = N // BS


def _session(model, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _model(nodes, inits):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _ints(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _gathered(cols, k, shape):
    """x -> its kept input blocks, block row by block row, reshaped to ``shape``."""
    nodes = [helper.make_node("Reshape", ["x", "blocks"], ["xb"]), helper.make_node("Gather", ["xb", "cols"], ["g"], axis=0),
             helper.make_node("Reshape", ["g", "gshape"], ["g2"])]
    return nodes, [_ints("blocks", [C, BS]), _ints("cols", cols.reshape(-1)), _ints("gshape", shape)]


def _out(src):
    return [helper.make_node("Reshape", [src, "oshape"], ["y"])], [_ints("oshape", [1, N])]


def build(name, vals, cols):
    """vals: (R, k*BS, BS), block row r's kept blocks stacked along K (input-major); cols: (R, k)."""
    k = cols.shape[1]
    K = k * BS
    if name == "bmm":
        nodes, inits = _gathered(cols, k, [R, 1, K])
        nodes.append(helper.make_node("MatMul", ["g2", "V"], ["p"]))
        inits.append(numpy_helper.from_array(vals, "V"))
    elif name == "gemv":
        nodes, inits = _gathered(cols, k, [R, K, 1])
        nodes.append(helper.make_node("MatMul", ["V", "g2"], ["p"]))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(vals.transpose(0, 2, 1)), "V"))
    elif name == "conv":
        nodes, inits = _gathered(cols, k, [1, R * K, 1, 1])
        nodes.append(helper.make_node("Conv", ["g2", "W"], ["p"], group=R, kernel_shape=[1, 1]))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(vals.transpose(0, 2, 1)).reshape(R * BS, K, 1, 1), "W"))
    elif name == "mulred":
        nodes, inits = _gathered(cols, k, [R, 1, K])
        nodes += [helper.make_node("Mul", ["V", "g2"], ["m"]), helper.make_node("ReduceSum", ["m", "axis"], ["p"], keepdims=0)]
        inits += [numpy_helper.from_array(np.ascontiguousarray(vals.transpose(0, 2, 1)), "V"), _ints("axis", [2])]
    elif name == "split":
        nodes, inits = _gathered(cols, k, [R, K])
        nodes.append(helper.make_node("Split", ["g2"], [f"row{r}" for r in range(R)], axis=0, num_outputs=R))
        for r in range(R):
            nodes.append(helper.make_node("MatMul", [f"row{r}", f"V{r}"], [f"prod{r}"]))
            inits.append(numpy_helper.from_array(vals[r], f"V{r}"))
        nodes.append(helper.make_node("Concat", [f"prod{r}" for r in range(R)], ["p"], axis=1))
    elif name.startswith("bmm-w"):
        width = int(name[len("bmm-w"):])
        parts = BS // width
        nodes, inits = _gathered(np.repeat(cols, parts, axis=0), k, [R * parts, 1, K])
        nodes.append(helper.make_node("MatMul", ["g2", "V"], ["p"]))
        narrow = vals.reshape(R, K, parts, width).transpose(0, 2, 1, 3).reshape(R * parts, K, width)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(narrow), "V"))
    else:
        raise ValueError(name)
    tail, tail_inits = _out("p")
    return _model(nodes + tail, inits + tail_inits)


def dense_model(weight):
    return _model([helper.make_node("MatMul", ["x", "Wt"], ["y"])], [numpy_helper.from_array(np.ascontiguousarray(weight.T), "Wt")])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=int, default=13, help="kept blocks per block row (of 128)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--formulations", default="bmm,gemv,conv,mulred,split")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    names = ["dense"] + args.formulations.split(",")
    sessions = {n: [] for n in names}
    xs = [rng.standard_normal((1, N)).astype(np.float32) for _ in range(args.copies)]
    for c in range(args.copies):
        cols = np.stack([np.sort(rng.choice(C, args.keep, replace=False)) for _ in range(R)])
        vals = rng.standard_normal((R, args.keep * BS, BS)).astype(np.float32)
        weight = np.zeros((N, N), np.float32)
        for r in range(R):
            for j, col in enumerate(cols[r]):
                weight[r * BS:(r + 1) * BS, col * BS:(col + 1) * BS] = vals[r, j * BS:(j + 1) * BS].T
        ref = xs[c] @ weight.T
        for n in names:
            s = _session(dense_model(weight) if n == "dense" else build(n, vals, cols), args.threads)
            err = np.abs(s.run(None, {"x": xs[c]})[0] - ref).max() / np.abs(ref).max()
            if err > 1e-4:
                raise SystemExit(f"{n}: output differs from the dense product (relative {err:.2e})")
            sessions[n].append(s)
    times = {n: [] for n in names}
    order = list(names)
    for rnd in range(args.rounds + 5):
        random.Random(rnd).shuffle(order)
        for n in order:
            calls = []
            for c in range(args.copies):
                t0 = time.perf_counter()
                sessions[n][c].run(None, {"x": xs[c]})
                calls.append(time.perf_counter() - t0)
            if rnd >= 5:  # warm-up rounds
                times[n].append(np.median(calls))
    med = {n: np.median(v) * 1e6 for n, v in times.items()}
    for n in names:
        print(f"{n:7s} {med[n]:8.1f} us  {med['dense'] / med[n]:5.2f}x ORT dense")


if __name__ == "__main__":
    main()
