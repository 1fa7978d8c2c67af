"""``compress bench solvers``: transposable N:M mask solvers side by side (time, kept magnitude).

Hubara et al. (arXiv 2102.08124; docs/methods.md section 3) solve one min-cost flow per tile with
networkx; that per-tile reference is the baseline here, timed on a sample of tiles and
extrapolated to the whole matrix (labelled ``extrapolated``). Every other figure is measured on
the full matrix: random Gaussian weights at each ``--sizes`` side, and the 2-D tensors of a
trained model (``--weights FILE.safetensors``, by default the built-in LSTM LM checkpoint when it
exists). Kept-magnitude ratios are against the exact solver's mask; feasibility is checked on
every mask in both orientations. Sizes whose predicted time exceeds ``--max-solve-s`` are skipped
with a printed note.

Run: ``compress bench solvers`` or ``python -m compressor.bench.solvers``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from pathlib import Path

import torch

from compressor.bench.common import machine_info, print_table, write_json
from compressor.solvers import cyclecancel, is_transposable_nm, kept_magnitude, transposable_nm_solve
from compressor.solvers.registry import resolve_solver

__all__ = ["add_arguments", "run", "reference_tile_seconds"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "lstm_lm.safetensors"
#: (label, method, options)
VARIANTS = (
    ("enumerate", "enumerate", {}),
    ("cyclecancel", "cyclecancel", {}),
    ("mincostflow", "mincostflow", {"workers": 1}),
    ("mincostflow-2proc", "mincostflow", {"workers": 2}),
    ("greedy+swap", "greedy", {"repair": "swap"}),
    ("greedy+exact", "greedy", {"repair": "exact"}),
    ("sinkhorn", "sinkhorn", {}),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``compress bench solvers``."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="square matrix sides (Gaussian weights)")
    parser.add_argument("--m", type=int, nargs="+", default=[4, 8, 16], help="tile sizes M (N = M/2 unless --n)")
    parser.add_argument("--n", type=int, default=None, help="kept per row/column of a tile (default M/2)")
    parser.add_argument("--solvers", nargs="+", default=[v[0] for v in VARIANTS], help="solver variants to run")
    parser.add_argument("--weights", type=str, default=None, help="safetensors file whose 2-D tensors are also solved")
    parser.add_argument("--reference-tiles", type=int, default=200, help="tiles timed for the networkx reference")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds for matrices up to 1024 x 1024")
    parser.add_argument("--max-solve-s", type=float, default=20.0, help="skip a solver when its time predicted from the previous size exceeds this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default="bench-results/solvers.json", help="where to write the JSON results")


def reference_tile_seconds(weight: torch.Tensor, n: int, m: int, tiles: int) -> tuple[float, int, float]:
    """networkx min-cost flow one tile at a time (the paper's code): (seconds per tile, tiles timed, kept |w|).

    Tiles are the first ``tiles`` full M x M tiles in row-major tile order.
    """
    import networkx as nx

    rows, cols = weight.shape
    a = weight.detach().abs().double()
    coords = list(itertools.islice(((i, j) for i in range(0, rows - m + 1, m) for j in range(0, cols - m + 1, m)), tiles))
    kept = 0.0
    t0 = time.perf_counter()
    for i0, j0 in coords:
        tile = a[i0 : i0 + m, j0 : j0 + m]
        scale = 2**24 / max(float(tile.max()), 1e-300)
        g = nx.DiGraph()
        g.add_node("s", demand=-n * m)
        g.add_node("t", demand=n * m)
        for i in range(m):
            g.add_edge("s", ("r", i), capacity=n, weight=0)
            g.add_edge(("c", i), "t", capacity=n, weight=0)
            for j in range(m):
                g.add_edge(("r", i), ("c", j), capacity=1, weight=-int(round(float(tile[i, j]) * scale)))
        flow = nx.min_cost_flow(g)
        kept += sum(float(tile[i, j]) for i in range(m) for j in range(m) if flow[("r", i)][("c", j)])
    elapsed = time.perf_counter() - t0
    return elapsed / max(len(coords), 1), len(coords), kept


def _time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _solve_all(weight: torch.Tensor, n: int, m: int, args, rate: dict, note: str) -> dict:
    """Run every selected solver on one matrix: {"tiles", "optimal", "reference_s", "solvers": {label: ...}}."""
    shape = tuple(weight.shape)
    tiles = -(-shape[0] // m) * -(-shape[1] // m)
    repeats = args.repeats if shape[0] * shape[1] <= 1024 * 1024 else 1
    exact_name = resolve_solver("exact", n, m)
    order = [v for v in VARIANTS if v[0] in args.solvers and (v[1] != "enumerate" or exact_name == "enumerate")
             and (v[1] != "cyclecancel" or cyclecancel.available(m))]
    order.sort(key=lambda v: v[1] != exact_name)  # the exact mask first: ratios need it
    out = {"tiles": tiles, "optimal": None, "reference_s": None, "solvers": {}}
    for label, method, opts in order:
        predicted = rate.get((label, n, m), 0.0) * tiles
        if predicted > args.max_solve_s:
            print(f"note: skipped {label} {n}:{m} on {note}: predicted {predicted:.0f} s > --max-solve-s {args.max_solve_s:g}")
            continue
        if opts.get("workers", 1) > 1 and tiles < 4096:
            continue  # process start-up dominates on small matrices
        seconds, (mask, info) = _time(lambda: transposable_nm_solve(weight, n, m, method, **opts), repeats)
        rate[(label, n, m)] = seconds / tiles
        feasible = is_transposable_nm(mask, n, m) and is_transposable_nm(mask.T, n, m)
        kept = kept_magnitude(weight, mask)
        if method == exact_name and out["optimal"] is None:
            out["optimal"] = kept
        out["solvers"][label] = {"seconds": seconds, "kept": kept, "feasible": feasible, "tiles_repaired": info["tiles_repaired"]}
    if args.reference_tiles > 0 and min(shape) >= m:
        # seconds per tile do not depend on the matrix size: time one sample per N:M and reuse it
        if ("reference", n, m) not in rate:
            rate[("reference", n, m)] = reference_tile_seconds(weight, n, m, args.reference_tiles)[:2]
        per_tile, timed = rate[("reference", n, m)]
        out["reference_s"] = per_tile * tiles
        out["reference_tiles_timed"] = timed
    return out


def _merge(parts: list[dict]) -> dict:
    """Sum several matrices' results (the tensors of one model) into one."""
    out = {"tiles": sum(p["tiles"] for p in parts), "solvers": {}}
    out["optimal"] = None if any(p["optimal"] is None for p in parts) else sum(p["optimal"] for p in parts)
    out["reference_s"] = None if any(p["reference_s"] is None for p in parts) else sum(p["reference_s"] for p in parts)
    out["reference_tiles_timed"] = sum(p.get("reference_tiles_timed", 0) for p in parts)
    labels = set.intersection(*(set(p["solvers"]) for p in parts)) if parts else set()
    for label in [v[0] for v in VARIANTS if v[0] in labels]:
        rs = [p["solvers"][label] for p in parts]
        out["solvers"][label] = {
            "seconds": sum(r["seconds"] for r in rs),
            "kept": sum(r["kept"] for r in rs),
            "feasible": all(r["feasible"] for r in rs),
            "tiles_repaired": sum(r["tiles_repaired"] for r in rs),
        }
    return out


def _emit(source: str, size: str, n: int, m: int, res: dict, rows: list, records: list) -> None:
    tiles, opt, ref = res["tiles"], res["optimal"], res["reference_s"]
    for label, r in res["solvers"].items():
        ratio = r["kept"] / opt if opt else None
        speedup = ref / r["seconds"] if ref else None
        rep = r["tiles_repaired"]
        rows.append([source, size, f"{n}:{m}", label, r["seconds"], "measured",
                     "n/a" if ratio is None else f"{ratio:.5f}", f"{rep} ({100 * rep / tiles:.1f}%)",
                     "yes" if r["feasible"] else "NO", "n/a" if speedup is None else f"{speedup:.0f}x"])
        records.append({"source": source, "size": size, "n": n, "m": m, "solver": label, "seconds": r["seconds"],
                        "timing": "measured", "kept_ratio": ratio, "tiles": tiles, "tiles_repaired": rep,
                        "feasible": r["feasible"], "speedup_vs_reference": speedup})
    if ref is not None:
        rows.append([source, size, f"{n}:{m}", "networkx per tile (ref)", ref, "extrapolated", "1 (exact)", "-", "-", "1x"])
        records.append({"source": source, "size": size, "n": n, "m": m, "solver": "networkx per tile (ref)",
                        "seconds": ref, "timing": "extrapolated", "tiles": tiles, "tiles_timed": res["reference_tiles_timed"]})


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise SystemExit(f"--weights {path}: no such file")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise SystemExit(f"--weights {path}: not a readable safetensors file ({exc})") from exc
    return {k: v.float() for k, v in state.items() if v.dim() == 2 and v.is_floating_point()}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table, write JSON. Returns 0 on success."""
    unknown = set(args.solvers) - {v[0] for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown solvers {sorted(unknown)}; choose from {[v[0] for v in VARIANTS]}")
    info = machine_info()
    info["load_average_at_start"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(f"machine: {info['processor']}, {info['cpu_count']} cores, torch {info['torch']} ({info['torch_threads']} threads)")
    gen = torch.Generator().manual_seed(args.seed)
    rows: list = []
    records: list = []
    rate: dict = {}
    for m in args.m:
        n = args.n if args.n is not None else m // 2
        for size in sorted(args.sizes):
            weight = torch.randn(size, size, generator=gen)
            res = _solve_all(weight, n, m, args, rate, f"{size}x{size}")
            _emit("gaussian", f"{size}x{size}", n, m, res, rows, records)
            del weight
    weights = Path(args.weights) if args.weights else (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.exists() else None)
    if weights is None:
        print(f"note: no trained-model weights ({DEFAULT_WEIGHTS} does not exist and --weights was not given); skipped that part")
    else:
        tensors = _model_tensors(weights)
        if not tensors:
            print(f"note: {weights} holds no 2-D floating tensors; skipped that part")
        else:
            params = sum(t.numel() for t in tensors.values())
            size = f"{len(tensors)}x2D, {params / 1e6:.2f}M"
            print(f"model weights {weights}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))
            for m in args.m:
                n = args.n if args.n is not None else m // 2
                parts = [_solve_all(t, n, m, args, rate, f"{weights.name}:{k}") for k, t in tensors.items()]
                _emit(weights.name, size, n, m, _merge(parts), rows, records)
    columns = ["weights", "size", "N:M", "solver", "time_s", "timing", "kept/optimal", "tiles repaired", "feasible", "vs reference"]
    if info["load_average_at_start"] is not None:
        info["load_average_at_end"] = list(os.getloadavg())
        print(f"load average (1, 5, 15 min): start {info['load_average_at_start']}, end {info['load_average_at_end']}")
    print_table("Transposable N:M mask solvers", columns, rows)
    path = write_json(args.json, {"benchmark": "solvers", "machine": info, "command": getattr(args, "command_line", None),
                                  "args": {k: v for k, v in vars(args).items() if k != "func"}, "results": records})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m compressor.bench.solvers", description=__doc__.splitlines()[0])
    add_arguments(parser)
    ns = parser.parse_args()
    ns.command_line = "python -m compressor.bench.solvers " + " ".join(sys.argv[1:])
    raise SystemExit(run(ns))
