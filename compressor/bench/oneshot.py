"""``compress bench oneshot``: one-shot pruning methods side by side on the built-in LM.

For each pattern in ``--patterns`` (``50%`` unstructured, ``2:4``), the selected layers
(``--targets``, default the LSTM) of ``lstm-lm`` are pruned in one shot, without fine-tuning, by:

- ``magnitude``: ``unstructured_prune`` (per layer) or ``nm_prune``;
- ``wanda``: |W| x input column norm per output row (Sun et al., arXiv 2306.11695);
- ``nm_convert``: magnitude N:M mask plus exact least-squares reconstruction of every row on the
  calibration inputs (Hubara et al.'s AdaPrune, ``reconstruct: lstsq``; N:M only, so ``-`` for
  unstructured);
- ``sparsegpt``: OBS mask selection and weight update (Frantar & Alistarh, arXiv 2301.00774).

Every calibration-based method records ``--rows`` positions of the same lm-task batches. The table
has the test perplexity (the pydoc test split, the figure the pipeline's report prints; capped at
``--eval-tokens`` tokens when given), its change against the dense model, the sparsity of the
selected layers and the seconds per run (the pass and both evaluations).
"""

from __future__ import annotations

import argparse
import io
import time

from .common import machine_info, print_table, standalone, write_json

__all__ = ["add_arguments", "run", "METHODS"]

METHODS = ("magnitude", "wanda", "nm_convert", "sparsegpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patterns", default="50%,2:4", help="comma-separated: a sparsity like 50%% (unstructured) or N:M")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default="rnn", help="comma-separated recipe targets (default: the LSTM)")
    parser.add_argument("--rows", type=int, default=16384, help="calibration rows per layer")
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="evaluate perplexity on the first N test tokens (0: the whole test split)")
    parser.add_argument("--json", default="bench-results/oneshot.json")


def _step(method: str, pattern: str, targets: list[str], rows: int) -> dict | None:
    """The recipe step of ``method`` at ``pattern`` (None: the method has no such pattern)."""
    calibration = {"name": "lm", "batch_size": 16}
    if pattern.endswith("%"):
        sparsity = float(pattern[:-1]) / 100
        steps = {
            "magnitude": {"pass": "unstructured_prune", "sparsity": sparsity},
            "wanda": {"pass": "wanda", "sparsity": sparsity, "rows": rows, "calibration": calibration},
            "sparsegpt": {"pass": "sparsegpt", "sparsity": sparsity, "rows": rows, "calibration": calibration},
        }
    else:
        n, m = (int(v) for v in pattern.split(":"))
        nm = {"pattern": "nm", "n": n, "m": m, "rows": rows, "calibration": calibration}
        steps = {
            "magnitude": {"pass": "nm_prune", "n": n, "m": m},
            "wanda": {"pass": "wanda", **nm},
            "nm_convert": {"pass": "nm_convert", "n": n, "m": m, "transposable": False, "score": "magnitude",
                           "reconstruct": "lstsq", "rows": rows, "calibration": calibration},
            "sparsegpt": {"pass": "sparsegpt", **nm},
        }
    return {"targets": targets, **steps[method]} if method in steps else None


def run(args) -> int:
    from rich.console import Console

    from .. import Pipeline, load_model
    from ..corpus import pydoc_text, split_text
    from ..models.lstm_lm import perplexity
    from ..recipe import parse_recipe

    targets = [t for t in args.targets.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"compress bench oneshot: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    spec = load_model("lstm-lm")
    test_ids = spec.vocab.encode(split_text(pydoc_text()).test)
    if args.eval_tokens:
        test_ids = test_ids[: args.eval_tokens + 1]
    dense = perplexity(spec.model, test_ids)
    print(f"dense: test perplexity {dense:.4f} ({test_ids.numel() - 1} tokens)", flush=True)
    rows, results = [["dense", "-", f"{dense:.3f}", "-", "0.0%", "-"]], []
    for pattern in args.patterns.split(","):
        for method in methods:
            step = _step(method, pattern, targets, args.rows)
            if step is None:
                rows.append([pattern, method, "-", "-", "-", "(N:M only)"])
                continue
            spec = load_model("lstm-lm")
            spec.evaluate = lambda model: {"perplexity": perplexity(model, test_ids)}
            t0 = time.perf_counter()
            result = Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=Console(file=io.StringIO()))
            seconds = time.perf_counter() - t0
            value = result.report.metrics["perplexity"]["after"]
            selected = [r for r in result.report.layers if r.name in result.masks]
            sparsity = sum(r.sparsity * r.params for r in selected) / max(sum(r.params for r in selected), 1)
            entry = {"pattern": pattern, "method": method, "pass": step["pass"], "perplexity": value, "dense": dense,
                     "change": value / dense - 1, "sparsity": sparsity, "layers": [r.name for r in selected],
                     "seconds": seconds}
            results.append(entry)
            rows.append([pattern, method, f"{value:.3f}", f"{entry['change']:+.1%}", f"{sparsity:.1%}", f"{seconds:.0f}"])
            print(f"{pattern} {method}: perplexity {value:.4f} ({entry['change']:+.1%}), sparsity {sparsity:.1%}, "
                  f"{seconds:.0f} s", flush=True)
    print_table(f"one-shot pruning of lstm-lm ({', '.join(targets)}), no fine-tuning",
                ["pattern", "method", "test ppl", "vs dense", "sparsity", "s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("oneshot", add_arguments, run, __doc__))
