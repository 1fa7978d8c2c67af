"""Artifact size, load time and load memory: packed ``model.safetensors`` vs the dense fp32 checkpoint.

For each case a built-in model is compressed (perplexity skipped) into an artifact. Sizes: the
bytes of its ``model.safetensors`` over the bytes of a safetensors file of the dense state dict of
the same model, the same weights in the dense layout (format 1, ``compress export --dense``), the
``model.onnx`` a case exports, and each case's target from issue #25 with whether it is met.

Load: ``compressor.load(DIR)`` against the dense checkpoint's load, building the model with its
constructor and ``load_state_dict(safetensors.torch.load_file(...))``. Two measures: the median of
``--repeats`` interleaved rounds in this process (warm), and ``--processes`` runs of each in a
fresh Python process (alternating), whose medians give the cold load time and the peak resident
memory of the load: the process resets its peak-RSS mark (``/proc/self/clear_refs``) after its
imports, loads, and reads ``VmHWM`` from ``/proc/self/status``; the figure is that peak minus the
RSS just before the load. RSS counts every byte the load touched (tensors from torch's CPU
allocator, the file's pages, freed temporaries glibc has not returned), which neither
``tracemalloc`` (Python objects only) nor torch's allocator statistics (CUDA only) see; a fresh
process keeps earlier loads' freed memory out of it. Linux only (elsewhere the memory is null).
Loads run with ``--threads`` torch threads (default 1, both sides).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import machine_info, print_table, standalone, time_interleaved, write_json

__all__ = ["add_arguments", "run", "CASES"]

ROOT = Path(__file__).resolve().parents[2]
BALANCED_90_8x8 = [{"pass": "block_prune", "block": [8, 8], "sparsity": 0.9, "balanced": True}]
#: case -> (built-in lstm-lm config: None = the shipped trained model, else random weights at that size;
#: passes or a shipped recipe (its passes, and its ONNX export); issue #25's size target)
CASES = {
    "balanced 90% 8x8": (None, BALANCED_90_8x8, "<= 0.12"),
    # 16x16 blocks: a block row of 4 or 16 block columns keeps 1 or 2, so only 75-87.5% is reached
    "balanced 90% 16x16": (None, [{"pass": "block_prune", "block": [16, 16], "sparsity": 0.9, "balanced": True}],
                           "<= 0.12"),
    "2:4": (None, [{"pass": "nm_prune", "n": 2, "m": 4}], "<= 0.52 + index bits"),
    "transposable 4:8": (None, [{"pass": "nm_convert", "n": 4, "m": 8, "transposable": True, "reconstruct": "none"}],
                         "<= 0.55"),
    "unstructured 90%": (None, [{"pass": "unstructured_prune", "sparsity": 0.9}], "<= 0.15"),
    "main job (lstm-oneshot)": (None, "recipes/lstm-oneshot.yaml", "< 1 (artifact and ONNX)"),
    # the size where loading shows: 2-layer LSTM LM, hidden 1024 (13.7M weights), swapped to SparseLSTM
    "lstm 1024 balanced 90% 32x32 + kernels": (
        {"hidden": 1024, "embedding": 256},
        [{"pass": "block_prune", "targets": ["rnn"], "block": [32, 32], "sparsity": 0.9, "balanced": True},
         {"pass": "swap_kernels", "force": True, "repeats": 3}], "<= 0.12, load no slower than dense"),
}

# One load in a fresh interpreter: argv = kind (packed|dense), path, built-in name, config JSON, torch threads.
_CHILD = r"""
import json, re, sys, time
import torch
import compressor, compressor.artifacts, compressor.kernels
from compressor.models import BUILTIN_MODELS
from safetensors.torch import load_file

def status():
    text = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmHWM", "VmRSS")}

kind, path, name, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak-RSS mark (VmHWM) starts again from the RSS now
    before = status()["VmRSS"]
except OSError:
    before = None
t0 = time.perf_counter()
if kind == "packed":
    model = compressor.load(path)
else:
    model = BUILTIN_MODELS[name](config, False).model
    model.load_state_dict(load_file(path))
seconds = time.perf_counter() - t0
after = status() if before is not None else None
print(json.dumps({"seconds": seconds, "peak_bytes": after and after["VmHWM"] - before,
                  "kept_bytes": after and after["VmRSS"] - before}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lstm-lm", help="a built-in model (cases with a config: lstm-lm)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=10, help="in-process load rounds")
    parser.add_argument("--processes", type=int, default=5, help="fresh-process loads of each side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads while loading (both sides; on a shared machine OpenMP's parallel "
                             "regions wait for busy cores and slow every small op)")
    parser.add_argument("--json", default="bench-results/storage.json")


def _recipe(passes):
    from ..recipe import parse_recipe
    from ..safe_yaml import load_yaml

    export = {}
    if isinstance(passes, str):  # a shipped recipe: its passes and its export
        data = load_yaml((ROOT / passes).read_text(encoding="utf-8"), passes)
        passes, export = data["passes"], data.get("export", {})
    return parse_recipe({"version": 1, "passes": passes, **({"export": export} if export else {})})


def _index_bits_bytes(art: Path) -> int | None:
    """Bytes of the N:M layers if they were stored as values + ceil(log2 m)-bit indices (4:8: 3 bits)."""
    from ..artifacts import load_masks, read_metadata
    from ..packing import _nm

    meta = read_metadata(art)
    masks, total = load_masks(art), 0
    for name, pattern in meta["patterns"].items():
        if pattern.get("kind") != "nm" or name not in masks:
            continue
        mask = masks[name]
        parts = _nm(torch.zeros(mask.shape), mask, pattern["n"], pattern["m"])[1]
        total += sum(t.numel() * t.element_size() for t in parts.values())
    return total or None


def _stored_index_bits(art: Path) -> int:
    """Bytes of the N:M position bits the artifact stores (the ``idx`` parts of ``nm`` layouts)."""
    from safetensors import safe_open

    with safe_open(str(art / "model.safetensors"), framework="pt") as fh:
        return sum(fh.get_slice(k).get_shape()[0] for k in fh.keys() if k.startswith("__packed__.") and k.endswith(".idx"))


def _target(case: str, r: dict) -> tuple[str, bool]:
    """The case's target from issue #25 as measured, and whether it is met."""
    ratio = r["ratio"]
    if case == "2:4":
        bound = 0.52 + r["stored_index_bits_bytes"] / r["dense_checkpoint_bytes"]
        return f"<= 0.52 + index bits ({bound:.3f})", ratio <= bound
    if case.startswith("main job"):
        onnx = r.get("onnx_ratio")
        return "< 1 (artifact and ONNX)", ratio < 1 and onnx is not None and onnx < 1
    if case.startswith("lstm 1024"):
        return "<= 0.12, load no slower than dense", ratio <= 0.12 and r["fresh_packed_s"] <= r["fresh_dense_s"]
    text = CASES[case][2]
    return text, ratio <= float(text.split()[-1])


def _fresh_loads(art: Path, dense_path: Path, name: str, config: dict, runs: int, threads: int) -> dict:
    """Medians of ``runs`` fresh-process loads of each side (alternating): seconds and peak RSS bytes."""
    got: dict[str, list[dict]] = {"packed": [], "dense": []}
    for _ in range(runs):
        for kind, path in (("packed", art), ("dense", dense_path)):
            out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(path), name, json.dumps(config), str(threads)],
                                 capture_output=True, text=True, check=True, cwd=art.parent)  # not a source tree
            got[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {}
    for kind, rows in got.items():
        result[f"fresh_{kind}_s"] = statistics.median(r["seconds"] for r in rows)
        peaks = [r["peak_bytes"] for r in rows if r["peak_bytes"] is not None]
        kept = [r["kept_bytes"] for r in rows if r["kept_bytes"] is not None]
        result[f"peak_rss_{kind}_bytes"] = statistics.median(peaks) if peaks else None
        result[f"kept_rss_{kind}_bytes"] = statistics.median(kept) if kept else None
        result[f"fresh_{kind}_runs"] = rows
    return result


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f}"


def run(args) -> int:
    from rich.console import Console
    from safetensors.torch import load_file, save_file

    import compressor
    from ..artifacts import write_dense
    from ..loading import no_metric
    from ..models import BUILTIN_MODELS

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f"--cases: unknown {', '.join(map(repr, unknown))}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    sizes, loads, results = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case in cases:
            config, passes, _ = CASES[case]
            spec = BUILTIN_MODELS[args.model](config, False) if config is not None else compressor.load_model(args.model)
            spec.evaluate = no_metric  # sizes and load time only
            config = spec.source["config"]  # the architecture the dense side rebuilds (random initial values)
            i = len(results)
            dense_path = tmp / f"dense{i}.safetensors"
            save_file({k: v.contiguous() for k, v in spec.model.state_dict().items()}, str(dense_path))
            dense_bytes = dense_path.stat().st_size
            art = tmp / f"case{i}"
            t0 = time.perf_counter()
            compressor.Pipeline(_recipe(passes)).run(spec, out=art, console=Console(file=io.StringIO()))
            seconds = time.perf_counter() - t0
            packed = (art / "model.safetensors").stat().st_size
            old = write_dense(art, tmp / f"old{i}.safetensors").stat().st_size
            meta = compressor.read_metadata(art)
            layouts = sorted({r["layout"] for r in meta["layouts"].values()})

            def load_dense(_, dense_path=dense_path, config=config):
                net = BUILTIN_MODELS[args.model](config, False).model
                net.load_state_dict(load_file(str(dense_path)))
                return net

            threads = torch.get_num_threads()
            torch.set_num_threads(args.threads)
            try:
                t = time_interleaved({"packed": lambda _, art=art: compressor.load(art), "dense": load_dense},
                                     repeats=args.repeats, warmup=1)
            finally:
                torch.set_num_threads(threads)
            result = {"case": case, "model": args.model, "config": config, "packed_bytes": packed,
                      "dense_checkpoint_bytes": dense_bytes, "ratio": packed / dense_bytes, "format1_bytes": old,
                      "format1_ratio": old / dense_bytes, "layouts": layouts,
                      "kernels": sorted({r["kind"] for r in meta["replacements"]}),
                      "stored_index_bits_bytes": _stored_index_bits(art),
                      "load_packed_ms": t["packed"]["median_s"] * 1e3, "load_dense_ms": t["dense"]["median_s"] * 1e3,
                      "compress_s": seconds}
            if (art / "model.onnx").is_file():
                result["onnx_bytes"] = (art / "model.onnx").stat().st_size
                result["onnx_ratio"] = result["onnx_bytes"] / dense_bytes
            idx = _index_bits_bytes(art)
            if idx is not None:
                result["nm_index_bits_bytes"] = idx
            result.update(_fresh_loads(art, dense_path, args.model, config, args.processes, args.threads))
            result["target"], result["met"] = _target(case, result)
            results.append(result)
            onnx = f"{result['onnx_ratio']:.4f}" if "onnx_ratio" in result else ""
            sizes.append([case, packed, f"{result['ratio']:.4f}", result["target"], "yes" if result["met"] else "no",
                          f"{result['format1_ratio']:.4f}", onnx, ",".join(layouts)])
            loads.append([case, ",".join(result["kernels"]) or "-", f"{result['load_packed_ms']:.1f}",
                          f"{result['load_dense_ms']:.1f}", f"{result['fresh_packed_s'] * 1e3:.1f}",
                          f"{result['fresh_dense_s'] * 1e3:.1f}", _mb(result["peak_rss_packed_bytes"]),
                          _mb(result["peak_rss_dense_bytes"])])
            print(f"{case}: done ({seconds:.1f} s to compress)", flush=True)
    print_table(f"{args.model}: artifact model.safetensors vs the dense fp32 checkpoint of the same model",
                ["case", "bytes", "ratio", "target", "met?", "format 1 ratio", "onnx ratio", "layouts"], sizes)
    print_table(f"load: compressor.load vs constructor + load_state_dict(load_file(dense)), {args.threads} torch "
                f"thread(s); in-process medians of {args.repeats} interleaved rounds, fresh-process medians of "
                f"{args.processes}; peak RSS: the load's peak resident memory above the RSS before it",
                ["case", "kernels", "warm ms", "dense warm ms", "fresh ms", "dense fresh ms", "peak RSS MB",
                 "dense peak RSS MB"], loads)
    for r in results:
        if "nm_index_bits_bytes" in r:
            print(f"{r['case']}: its N:M weights as values + index bits would take {r['nm_index_bits_bytes']:,} bytes")
    write_json(args.json, {"machine": machine_info(), "model": args.model, "load_threads": args.threads,
                           "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("storage", add_arguments, run, __doc__))
