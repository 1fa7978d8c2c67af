"""ORT on an artifact's model.onnx with pruned weights stored dense vs as bitmask + values.

    python scripts/onnx_compact_timing.py ARTIFACT_DIR [--rounds 200]

Re-exports nothing: reads ARTIFACT_DIR/model.onnx (compacted by the toolkit), rebuilds the dense
initializers the unpacking subgraph stands for (ORT's own optimised graph of it), and times both
files interleaved on the artifact's first example input. Prints bytes, the max output difference
and median run times; BENCHMARKS.md cites it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort

from compressor.artifacts import read_metadata
from compressor.export import fresh_inputs

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    compact = os.path.join(args.directory, "model.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        folded = os.path.join(tmp, "folded.onnx")  # ORT's constant-folded graph: the weights dense again
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = folded
        ort.InferenceSession(compact, opts, providers=["CPUExecutionProvider"])
        specs = read_metadata(args.directory)["inputs"]
        x = fresh_inputs(specs, torch.Generator().manual_seed(0))
        sessions = {name: ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                    for name, path in (("compact", compact), ("dense", folded))}
        feeds = {name: {i.name: t.numpy() for i, t in zip(s.get_inputs(), x)} for name, s in sessions.items()}
        outs = {name: s.run(None, feeds[name])[0] for name, s in sessions.items()}
        times = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, feeds[name])
                times[name].append(time.perf_counter() - t0)
        print(f"bytes: compact {os.path.getsize(compact):,}, dense {os.path.getsize(folded):,}")
        print(f"max |difference| of the outputs: {float(np.abs(outs['compact'] - outs['dense']).max()):.3g}")
        for name in sessions:
            print(f"{name}: median {statistics.median(times[name]) * 1e3:.3f} ms over {args.rounds} interleaved rounds")
        print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
