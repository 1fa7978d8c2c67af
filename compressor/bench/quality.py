"""``compress bench quality``: does block pruning during fine-tuning keep the LM's quality?

Reproduces the relative claim of Narang et al. (PAPERS.md section 1) on the built-in
character LSTM: starting from the shipped checkpoint, every variant gets the same budget of
fine-tuning steps on the benchmark corpus (Shakespeare and Milton by default, downloaded once):

- ``dense``: plain fine-tuning (the baseline);
- ``block80`` / ``block90``: gradual block pruning (cubic schedule) to 80% / 90% while fine-tuning;
- ``lasso90``: gradual block pruning to 90% combined with a group-lasso penalty.

It reports test perplexity, the relative gap to dense, sparsity and wall time, and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from .common import machine_info, print_table, standalone, write_json

__all__ = ["add_arguments", "run", "VARIANTS"]

VARIANTS = ("dense", "block80", "block90", "lasso90")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", default="shakespeare", help="pydoc | shakespeare | a text file")
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps per variant (the same budget for all)")
    parser.add_argument("--block", type=int, default=16, help="square block size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lasso", type=float, default=2e-5, help="group-lasso strength of the lasso90 variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", default="bench-results/quality.json")


def _recipe(variant: str, args) -> dict:
    task = {"name": "lm", "corpus": args.corpus, "batch_size": args.batch, "seq_len": args.seq_len, "eval_tokens": 0}
    train = {"steps": args.steps, "lr": args.lr, "eval_every": 0, "checkpoint_every": 0, "task": task}
    if variant == "dense":
        step = {"pass": "finetune", "train": train}
    else:
        sparsity = {"block80": 0.8, "block90": 0.9, "lasso90": 0.9}[variant]
        step = {"pass": "gradual_block_prune", "targets": ["rnn"], "block": [args.block, args.block],
                "sparsity": sparsity, "end": (3 * args.steps) // 4, "freq": max(1, args.steps // 40),
                "balanced": True, "train": train}
        if variant == "lasso90":
            step["group_lasso"] = args.lasso
    return {"version": 1, "passes": [step]}


def run(args) -> int:
    from rich.console import Console

    from .. import Pipeline, load_model
    from ..corpus import corpus_text
    from ..recipe import parse_recipe
    from ..tasks import LMTask, TaskConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    corpus_text(args.corpus)  # fetch and cache before any timing
    rows, results = [], {}
    for variant in variants:
        torch.manual_seed(0)
        spec = load_model("lstm-lm")
        task = LMTask(TaskConfig(corpus=args.corpus, seq_len=args.seq_len, batch_size=args.batch, eval_tokens=0), spec.vocab)
        before = task.perplexity(spec.model, task.test_ids)
        t0 = time.perf_counter()
        result = Pipeline(parse_recipe(_recipe(variant, args))).run(spec, console=Console(file=io.StringIO()))
        seconds = time.perf_counter() - t0
        ppl = task.perplexity(result.model, task.test_ids)
        sparsity = sum(r.params - r.nonzero for r in result.report.layers if r.name.startswith("rnn.")) / \
            sum(r.params for r in result.report.layers if r.name.startswith("rnn."))
        results[variant] = {"test_perplexity": ppl, "before_finetune": before, "lstm_sparsity": sparsity, "seconds": seconds}
        print(f"{variant}: test perplexity {ppl:.4f} (before fine-tuning {before:.4f}), LSTM sparsity {sparsity:.1%}, {seconds:.0f}s", flush=True)
    dense = results.get("dense", {}).get("test_perplexity")
    for variant, r in results.items():
        gap = f"{(r['test_perplexity'] / dense - 1):+.1%}" if dense else "-"
        rows.append([variant, f"{r['lstm_sparsity']:.1%}", r["test_perplexity"], gap, f"{r['seconds']:.0f}"])
    print_table(f"LM quality after {args.steps} fine-tuning steps on {args.corpus} (test perplexity)",
                ["variant", "LSTM sparsity", "test ppl", "vs dense", "wall s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("quality", add_arguments, run, __doc__))
