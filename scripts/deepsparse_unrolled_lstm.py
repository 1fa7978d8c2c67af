"""DeepSparse's best shot at a block-pruned LSTM LM: the dense graph with the LSTM spelled out in MatMuls.

``compress bench model --deepsparse-python`` gives DeepSparse the dense counterpart's export, whose
recurrent layers are ONNX ``LSTM`` ops. DeepSparse's sparse kernels are for MatMul/Gemm/Conv, so this
script also gives it the same weights with every LSTM layer as ``SparseLSTM.from_dense(lstm, {})``
(plain ``nn.Linear`` projections, the per-step graph unrolled over the sequence: MatMuls whose
weights hold the pruned zeros), and times, interleaved, one thread each: ORT on the dense export,
DeepSparse on both dense graphs, ORT on the artifact's own export. BENCHMARKS.md "Other engines side
by side" has the figures.

    python scripts/deepsparse_unrolled_lstm.py ARTIFACT --model scripts/bench_rnn_models.py:lstm_lm_1024 \\
        --deepsparse-python /tmp/ds-venv/bin/python --tokens 32
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

import numpy as np
import torch

from compressor.artifacts import load
from compressor.bench.engines import DeepSparseWorker, deepsparse_onnx
from compressor.export import export_model, fresh_inputs
from compressor.kernels import SparseLSTM, ort_session
from compressor.swaps import densify
from compressor.timing import paired_ratio, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--model", required=True, help="the factory the artifact was made from")
    parser.add_argument("--deepsparse-python", required=True)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load(args.artifact, model=args.model).eval()
    dense = densify(model).eval()
    unrolled = copy.deepcopy(dense)
    for path, module in dense.named_modules():
        if isinstance(module, torch.nn.LSTM):
            unrolled.set_submodule(path, SparseLSTM.from_dense(module, {}).eval())
    specs = [{"shape": [1, args.tokens], "dtype": "int64", "high": model.embedding.num_embeddings}]
    gen = torch.Generator().manual_seed(0)
    feeds = [fresh_inputs(specs, gen)[0].numpy() for _ in range(args.copies)]
    n = args.copies
    with tempfile.TemporaryDirectory(prefix="ds_unrolled_") as tmp:
        paths = {}
        for name, m in (("dense", dense), ("unrolled", unrolled), ("ours", model)):
            os.mkdir(os.path.join(tmp, name))
            export_model(m, specs, os.path.join(tmp, name), step=False)  # each checked against torch
            paths[name] = os.path.join(tmp, name, "model.onnx")
        sessions = {k: ort_session(paths[k], threads=1, spin=False) for k in ("dense", "ours")}
        inputs = {k: s.get_inputs()[0].name for k, s in sessions.items()}
        reference = sessions["dense"].run(None, {inputs["dense"]: feeds[0]})[0]
        workers = {}
        for k in ("dense", "unrolled"):
            graph = deepsparse_onnx(paths[k], os.path.join(tmp, f"deepsparse_{k}.onnx"))
            workers[k] = DeepSparseWorker(args.deepsparse_python, graph, [[f] for f in feeds], 1, os.path.join(tmp, k))
            err = np.abs(workers[k].outputs[0][0] - reference).max() / np.abs(reference).max()
            print(f"DeepSparse on the {k} graph: {workers[k].engine}; max error vs ORT {err:.1e} of the largest output")
        fns = {"ORT, dense export (LSTM op)": lambda i: sessions["dense"].run(None, {inputs["dense"]: feeds[i % n]}),
               "DeepSparse, dense export (LSTM op)": workers["dense"].run,
               "DeepSparse, dense unrolled MatMuls": workers["unrolled"].run,
               "ORT, our export": lambda i: sessions["ours"].run(None, {inputs["ours"]: feeds[i % n]})}
        t = time_interleaved(fns, repeats=args.repeats, warmup=3)
        for w in workers.values():
            w.close()
    print(f"load average {os.getloadavg()[0]:.2f}; 1x{args.tokens} tokens, one thread, {args.repeats} rounds")
    for name, v in t.items():
        print(f"{name:38s} median {v['median_s'] * 1e3:8.2f} ms   min {v['min_s'] * 1e3:8.2f} ms")
    for name in ("DeepSparse, dense export (LSTM op)", "DeepSparse, dense unrolled MatMuls"):
        band = paired_ratio(t[name]["samples_s"], t["ORT, our export"]["samples_s"])
        print(f"our export vs {name}: {band['speedup']:.2f}x (95% band {band['low']:.2f}-{band['high']:.2f})")


if __name__ == "__main__":
    main()
