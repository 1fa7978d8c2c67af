"""``compress bench oneshot``: one-shot pruning methods side by side on a built-in model.

For each pattern in ``--patterns`` (``50%`` unstructured, ``2:4``, ``T4:8`` transposable), the selected layers
(``--targets``; default: the LSTM of ``lstm-lm``, the encoder blocks of ``char-encoder``) of ``--model``
are pruned in one shot, without fine-tuning, by:

- ``magnitude``: ``unstructured_prune`` (per layer), ``nm_prune``, or for transposable N:M the
  solvers' magnitude mask (``nm_convert`` without reconstruction);
- ``wanda``: |W| x input column norm per output row (Sun et al., arXiv 2306.11695; not transposable);
- ``nm_convert``: magnitude N:M mask plus exact least-squares reconstruction of every row on the
  calibration inputs (Hubara et al.'s AdaPrune, ``reconstruct: lstsq``; N:M only, so ``-`` for
  unstructured);
- ``sparsegpt``: OBS mask selection and weight update (Frantar & Alistarh, arXiv 2301.00774).

Every calibration-based method records ``--rows`` positions of the same batches: the lm task's text
windows for ``lstm-lm``, masked text (``compressor.models.char_encoder:masked_lm_task``, what the
encoder sees at inference) for ``char-encoder``. The table has the model's test metric (the pydoc
test split, the figure the pipeline's report prints: perplexity, or the char encoder's
masked-character perplexity; capped at ``--eval-tokens`` tokens when given), its change against the
dense model, the sparsity of the selected layers and the seconds per run (the pass and both evaluations).

``--allocations uniform,owl,sensitivity`` runs ``wanda`` and ``sparsegpt`` at unstructured patterns
once per layer-wise allocation (``allocation:`` of the passes). ``sensitivity`` needs per-layer curves:
the benchmark measures them first with :func:`compressor.sensitivity.sweep` (each layer alone at
``--sensitivity-sparsities``, perplexity on the *validation* split, capped at
``--sensitivity-eval-tokens``), once per method into ``--sensitivity-dir``/METHOD, which a rerun resumes.
"""

from __future__ import annotations

import argparse
import io
import time

from .common import machine_info, print_table, standalone, write_json

__all__ = ["add_arguments", "run", "METHODS", "parse_pattern"]

METHODS = ("magnitude", "wanda", "nm_convert", "sparsegpt")
#: per built-in model: the default targets and the calibration task
MODELS = {
    "lstm-lm": ("rnn", {"name": "lm", "batch_size": 16}),
    "char-encoder": ("re:body\\.blocks\\..*", {"name": "compressor.models.char_encoder:masked_lm_task", "batch_size": 16}),
}
ALLOCATIONS = ("uniform", "owl", "sensitivity")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="lstm-lm", choices=sorted(MODELS))
    parser.add_argument("--patterns", default="50%,2:4", help="comma-separated: a sparsity like 50%% (unstructured) or N:M")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default=None,
                        help="comma-separated recipe targets (default: lstm-lm's LSTM, char-encoder's encoder blocks)")
    parser.add_argument("--rows", type=int, default=16384, help="calibration rows per layer")
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="evaluate perplexity on the first N test tokens (0: the whole test split)")
    parser.add_argument("--allocations", default="uniform",
                        help=f"comma-separated layer-wise allocations of wanda and sparsegpt at unstructured patterns "
                             f"({', '.join(ALLOCATIONS)})")
    parser.add_argument("--sensitivity-dir", default="bench-results/sensitivity",
                        help="where the curves of allocation sensitivity are measured (one folder per method; resumed)")
    parser.add_argument("--sensitivity-sparsities", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--sensitivity-eval-tokens", type=int, default=0,
                        help="validation tokens per sensitivity point (0: the whole validation split)")
    parser.add_argument("--json", default="bench-results/oneshot.json")


def parse_pattern(pattern: str) -> tuple[float | None, int, int, bool]:
    """``50%`` -> (0.5, 0, 0, False); ``2:4`` -> (None, 2, 4, False); ``T4:8`` (transposable) -> (None, 4, 8, True)."""
    try:
        if pattern.endswith("%"):
            return float(pattern[:-1]) / 100, 0, 0, False
        transposable = pattern.startswith("T")
        n, m = (int(v) for v in pattern.lstrip("T").split(":"))
        return None, n, m, transposable
    except ValueError:
        raise SystemExit(f"bench: pattern {pattern!r} is not a sparsity like 50% or [T]N:M") from None


def _step(method: str, pattern: str, select: dict, rows: int, allocation: str = "uniform",
          sensitivity: str | None = None, calibration: dict | None = None) -> dict | None:
    """The recipe step of ``method`` at ``pattern`` (``50%``, ``2:4``, ``T4:8``) on the layers ``select``
    names (``{"targets": [...]}`` or ``{"ignore": [...]}``), calibrated on ``calibration`` (default the
    lm task). None: the method has no such pattern (wanda has no transposable N:M; nm_convert no
    unstructured), or no such allocation (only wanda and sparsegpt at unstructured patterns take one)."""
    calibration = calibration or {"name": "lm", "batch_size": 16}
    sparsity, n, m, transposable = parse_pattern(pattern)
    if sparsity is not None:
        shared = {"sparsity": sparsity, "rows": rows, "calibration": calibration, "allocation": allocation,
                  **({"sensitivity": sensitivity} if allocation == "sensitivity" else {})}
        steps = {
            "magnitude": {"pass": "unstructured_prune", "sparsity": sparsity},
            "wanda": {"pass": "wanda", **shared},
            "sparsegpt": {"pass": "sparsegpt", **shared},
        }
        if allocation != "uniform":
            steps.pop("magnitude")
    else:
        nm = {"pattern": "nm", "n": n, "m": m, "rows": rows, "calibration": calibration}
        convert = {"pass": "nm_convert", "n": n, "m": m, "transposable": transposable, "score": "magnitude"}
        steps = {
            # a transposable magnitude mask: nm_convert's solvers without calibration or reconstruction
            "magnitude": {**convert, "reconstruct": "none"} if transposable else {"pass": "nm_prune", "n": n, "m": m},
            "nm_convert": {**convert, "reconstruct": "lstsq", "rows": rows, "calibration": calibration},
            "sparsegpt": {"pass": "sparsegpt", **nm, "transposable": transposable},
        } if allocation == "uniform" else {}
        if not transposable and steps:
            steps["wanda"] = {"pass": "wanda", **nm}
    return {**select, **steps[method]} if method in steps else None


def run(args) -> int:
    from rich.console import Console

    from .. import Pipeline, load_model
    from ..recipe import parse_recipe

    default_targets, calibration = MODELS[args.model]
    targets = [t for t in (args.targets or default_targets).split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"compress bench oneshot: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    allocations = [a for a in args.allocations.split(",") if a]
    unknown = [a for a in allocations if a not in ALLOCATIONS]
    if unknown:
        raise SystemExit(f"compress bench oneshot: unknown allocation(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(ALLOCATIONS)}")
    curves = {}
    if "sensitivity" in allocations:  # per-layer curves first, one sweep per method (resumed when done before)
        from pathlib import Path

        from ..sensitivity import SENSITIVITY_FILE, sweep

        grid = [float(v) for v in args.sensitivity_sparsities.split(",") if v]
        for method in (m for m in methods if m in ("wanda", "sparsegpt")):
            # the sweep varies the sparsity itself
            step = _step(method, "50%", {"targets": targets}, args.rows, calibration=calibration)
            out = Path(args.sensitivity_dir) / args.model / method
            t0 = time.perf_counter()
            done = sweep(parse_recipe({"version": 1, "passes": [step]}), load_model(args.model), out, grid,
                         eval_tokens=args.sensitivity_eval_tokens or None, console=Console(file=io.StringIO()))
            curves[method] = str(out / SENSITIVITY_FILE)
            print(f"sensitivity curves of {method}: {done.evaluated} point(s) measured, {done.reused} reused, "
                  f"{time.perf_counter() - t0:.0f} s -> {curves[method]}", flush=True)
    spec = load_model(args.model)
    metric, dense = next(iter(spec.evaluate(spec.model, args.eval_tokens or None).items()))
    label = {"perplexity": "test ppl", "masked_perplexity": "masked test ppl"}.get(metric, metric)
    print(f"dense: {label} {dense:.4f}", flush=True)
    rows, results = [["dense", "-", "-", f"{dense:.3f}", "-", "0.0%", "-"]], []
    cases = [(pattern, method, allocation) for pattern in args.patterns.split(",") for method in methods
             for allocation in allocations]
    for pattern, method, allocation in cases:
        step = _step(method, pattern, {"targets": targets}, args.rows, allocation, curves.get(method), calibration)
        if step is None:
            if allocation == "uniform":
                rows.append([pattern, method, allocation, "-", "-", "-", "(no such pattern)"])
            continue
        t0 = time.perf_counter()
        result = Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(
            load_model(args.model), console=Console(file=io.StringIO()), eval_tokens=args.eval_tokens or None)
        seconds = time.perf_counter() - t0
        value = result.report.metrics[metric]["after"]
        selected = [r for r in result.report.layers if r.name in result.masks]
        sparsity = sum(r.sparsity * r.params for r in selected) / max(sum(r.params for r in selected), 1)
        entry = {"model": args.model, "pattern": pattern, "method": method, "allocation": allocation,
                 "pass": step["pass"], "metric": metric, metric: value, "dense": dense, "change": value / dense - 1,
                 "sparsity": sparsity,
                 "layers": [r.name for r in selected], "layer_sparsity": {r.name: r.sparsity for r in selected},
                 "seconds": seconds}
        results.append(entry)
        rows.append([pattern, method, allocation, f"{value:.3f}", f"{entry['change']:+.1%}", f"{sparsity:.1%}",
                     f"{seconds:.0f}"])
        print(f"{pattern} {method} {allocation}: {label} {value:.4f} ({entry['change']:+.1%}), sparsity "
              f"{sparsity:.1%} ({', '.join(f'{r.sparsity:.1%}' for r in selected)}), {seconds:.0f} s", flush=True)
    print_table(f"one-shot pruning of {args.model} ({', '.join(targets)}), no fine-tuning",
                ["pattern", "method", "allocation", label, "vs dense", "sparsity", "s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("oneshot", add_arguments, run, __doc__))
