"""Artifact size and load time: packed ``model.safetensors`` vs the dense fp32 checkpoint.

For each case the built-in model is compressed (perplexity skipped) into an artifact; the
figures are the bytes of its ``model.safetensors`` over the bytes of a safetensors file of the
dense state dict of the same model, the bytes of the same weights in the dense layout (format 1,
``compress export --dense``), and the median time of ``compressor.load`` vs building the model
and loading the dense checkpoint into it.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch

from .common import machine_info, print_table, standalone, time_interleaved, write_json

__all__ = ["add_arguments", "run", "CASES"]

ROOT = Path(__file__).resolve().parents[2]
#: case -> passes (or a shipped recipe whose passes are used)
CASES = {
    "balanced 90% 8x8": [{"pass": "block_prune", "block": [8, 8], "sparsity": 0.9, "balanced": True}],
    # 16x16 blocks: a block row of 4 or 16 block columns keeps 1 or 2, so only 75-87.5% is reached
    "balanced 90% 16x16": [{"pass": "block_prune", "block": [16, 16], "sparsity": 0.9, "balanced": True}],
    "2:4": [{"pass": "nm_prune", "n": 2, "m": 4}],
    "transposable 4:8": [{"pass": "nm_convert", "n": 4, "m": 8, "transposable": True, "reconstruct": "none"}],
    "unstructured 90%": [{"pass": "unstructured_prune", "sparsity": 0.9}],
    "main job (lstm-oneshot)": "recipes/lstm-oneshot.yaml",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lstm-lm", help="a built-in model")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=10, help="load-time rounds")
    parser.add_argument("--json", default="bench-results/storage.json")


def _recipe(case: str):
    from ..recipe import parse_recipe
    from ..safe_yaml import load_yaml

    passes = CASES[case]
    if isinstance(passes, str):  # a shipped recipe: its passes, without the ONNX export
        passes = load_yaml((ROOT / passes).read_text(encoding="utf-8"), passes)["passes"]
    return parse_recipe({"version": 1, "passes": passes})


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


def run(args) -> int:
    from rich.console import Console
    from safetensors.torch import load_file, save_file

    import compressor
    from ..artifacts import write_dense

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = compressor.load_model(args.model)
        dense_path = tmp / "dense.safetensors"
        save_file({k: v.contiguous() for k, v in spec.model.state_dict().items()}, str(dense_path))
        dense_bytes = dense_path.stat().st_size
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            spec = compressor.load_model(args.model)
            spec.evaluate = None  # sizes and load time only
            art = tmp / f"case{len(results)}"
            t0 = time.perf_counter()
            compressor.Pipeline(_recipe(case)).run(spec, out=art, console=Console(file=io.StringIO()))
            seconds = time.perf_counter() - t0
            packed = (art / "model.safetensors").stat().st_size
            old = write_dense(art, tmp / f"old{len(results)}.safetensors").stat().st_size
            layouts = sorted({r["layout"] for r in compressor.read_metadata(art)["layouts"].values()})

            def load_dense(_):
                net = compressor.load_model(args.model).model
                net.load_state_dict(load_file(str(dense_path)))
                return net

            t = time_interleaved({"packed": lambda _: compressor.load(art), "dense": load_dense},
                                 repeats=args.repeats, warmup=1)
            idx = _index_bits_bytes(art)
            result = {"case": case, "packed_bytes": packed, "dense_checkpoint_bytes": dense_bytes,
                      "ratio": packed / dense_bytes, "format1_bytes": old, "format1_ratio": old / dense_bytes,
                      "layouts": layouts, "load_packed_ms": t["packed"]["median_s"] * 1e3,
                      "load_dense_ms": t["dense"]["median_s"] * 1e3, "compress_s": seconds}
            if idx is not None:
                result["nm_index_bits_bytes"] = idx
            results.append(result)
            rows.append([case, packed, f"{packed / dense_bytes:.4f}", f"{old / dense_bytes:.4f}", ",".join(layouts),
                         f"{result['load_packed_ms']:.1f}", f"{result['load_dense_ms']:.1f}"])
    print_table(f"{args.model}: artifact model.safetensors vs the dense fp32 checkpoint ({dense_bytes:,} bytes)",
                ["case", "bytes", "ratio", "format 1 ratio", "layouts", "load ms", "dense load ms"], rows)
    for r in results:
        if "nm_index_bits_bytes" in r:
            print(f"{r['case']}: its N:M weights as values + index bits would take {r['nm_index_bits_bytes']:,} bytes")
    write_json(args.json, {"machine": machine_info(), "model": args.model, "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("storage", add_arguments, run, __doc__))
