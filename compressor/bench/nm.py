"""``compress bench nm``: plain vs transposable N:M, with and without reconstruction.

Hubara et al. (docs/methods.md section 3) on the built-in models: the character LSTM (``lstm-lm``, test
perplexity), the trained transformer encoder (``char-encoder``, masked-character test perplexity;
calibration on masked text from its ``masked_lm_task``) and, with ``--models tiny-encoder``, the random-weight encoder
(relative output error against the dense model on random token ids). For each N:M in ``--patterns`` and each of plain / transposable,
the ``nm_convert`` pass runs without reconstruction and with it, for each mask score in
``--scores`` (``magnitude``: |W|; ``activation``: |W| x input column norm); the table shows the
quality and the mean per-layer output error of the magnitude-only mask of the same pattern against
the error after the pass (mask score and reconstruction together).
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from .common import machine_info, print_table, standalone, write_json

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="lstm-lm,char-encoder")
    parser.add_argument("--patterns", default="2:4,4:8")
    parser.add_argument("--reconstruct", default="lstsq", choices=["lstsq", "adam"])
    parser.add_argument("--scores", default="magnitude,activation", help="mask scores to compare (nm_convert score)")
    parser.add_argument("--kinds", default="plain,transposable",
                        help="N:M kinds to run: plain and/or transposable (comma list)")
    parser.add_argument("--rows", type=int, default=4096, help="calibration rows per layer")
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="score the held-out metric on at most this many tokens (0: the whole test split)")
    parser.add_argument("--json", default="bench-results/nm.json")


@torch.no_grad()
def _output_error(dense, model, vocab: int, seed: int = 123) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (8, 64), generator=gen)
    ref = dense(x)
    return float((model(x) - ref).norm() / ref.norm())


def run(args) -> int:
    import copy

    from rich.console import Console

    from .. import Pipeline, load_model
    from ..recipe import parse_recipe

    from ..errors import CompressorError

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"plain", "transposable"}:
        raise CompressorError(f"--kinds {args.kinds}: choose plain and/or transposable (comma list)")
    rows, results = [], []
    for model_name in args.models.split(","):
        for pattern in args.patterns.split(","):
            n, m = (int(v) for v in pattern.split(":"))
            for transposable in [kind == "transposable" for kind in ("plain", "transposable") if kind in kinds]:
                for score, reconstruct in [(sc, rc) for sc in args.scores.split(",") for rc in ("none", args.reconstruct)]:
                    spec = load_model(model_name)
                    dense = copy.deepcopy(spec.model)
                    # calibrate on what each model sees at inference: text; masked text for the encoder
                    calibration = {"lstm-lm": {"name": "lm", "batch_size": 16, "seq_len": 64},
                                   "char-encoder": {"name": "compressor.models.char_encoder:masked_lm_task",
                                                    "batch_size": 16}}.get(model_name, {"name": "distill", "batch_size": 16})
                    step = {"pass": "nm_convert", "n": n, "m": m, "transposable": transposable,
                            "score": score, "reconstruct": reconstruct, "rows": args.rows, "calibration": calibration}
                    t0 = time.perf_counter()
                    result = Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(
                        spec, console=Console(file=io.StringIO()), eval_tokens=args.eval_tokens or None)
                    seconds = time.perf_counter() - t0
                    layer = result.report.passes[0]["metrics"]
                    # the reference is always the magnitude-only mask of the same pattern
                    before = [v.get("reconstruction_error_magnitude_mask", v["reconstruction_error_before"])
                              for v in layer.values() if "reconstruction_error_before" in v]
                    after = [v["reconstruction_error_after"] for v in layer.values() if "reconstruction_error_after" in v]
                    kept = [v["kept_magnitude_vs_plain"] for v in layer.values()]
                    if spec.evaluate is not None:  # the model's own held-out metric (first one)
                        key = next(k for k, v in result.report.metrics.items() if isinstance(v, dict) and "before" in v)
                        metric = {"perplexity": "test ppl", "masked_perplexity": "masked test ppl"}.get(key, key)
                        value, base = result.report.metrics[key]["after"], result.report.metrics[key]["before"]
                    else:
                        metric, value = "output rel err", _output_error(dense, result.model, spec.model.config.vocab_size)
                        base = 0.0
                    entry = {"model": model_name, "pattern": pattern, "transposable": transposable,
                             "score": score, "reconstruct": reconstruct, "metric": metric, "value": value, "dense": base,
                             "layer_error_before": sum(before) / len(before) if before else None,
                             "layer_error_after": sum(after) / len(after) if after else None,
                             "kept_magnitude_vs_plain": sum(kept) / len(kept), "seconds": seconds}
                    results.append(entry)
                    rows.append([model_name, ("T" if transposable else "") + pattern, score, reconstruct, metric, value,
                                 entry["kept_magnitude_vs_plain"],
                                 "-" if not after else f"{entry['layer_error_before']:.3f} -> {entry['layer_error_after']:.3f}",
                                 f"{seconds:.0f}"])
                    print(f"{model_name} {'transposable ' if transposable else ''}{pattern} {score} {reconstruct}: "
                          f"{metric} {value:.4f}", flush=True)
    print_table("N:M conversion (T = transposable)",
                ["model", "pattern", "score", "reconstruct", "metric", "value", "kept |w| vs plain",
                 "layer err magnitude mask -> after", "s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("nm", add_arguments, run, __doc__))
