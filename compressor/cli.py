"""The ``compress`` command.

    compress --recipe R [--model M] [--checkpoint C] [--out DIR] [--force] [--resume] [--allow-pickle] [--input SPEC ...]
    torchrun --nproc_per_node=N -m compressor --recipe R ...   (training passes run data-parallel)
    compress validate R [R ...]      check recipes without running them (--list: the passes)
    compress report DIR [--json]     the per-layer report of an artifact directory
    compress export DIR              model.onnx (+ step graphs), verified in ONNX Runtime
    compress layers [--model M]      the layers a recipe can target, with their module classes
    compress export DIR --dense F    the weights as dense tensors with zeros + bool masks (format 1)
    compress export DIR --hf OUT     a Hugging Face model directory (from_pretrained), [--source MODEL_DIR]
    compress bench NAME [...]        benchmarks (solvers, kernels, nm, oneshot, quality, storage, model DIR)
    compress sensitivity --recipe R  per-layer sensitivity curves of the recipe's first one-shot pass

Exit status 0 on success; on bad input a one-line reason on stderr and status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

__all__ = ["main"]

SUBCOMMANDS = ("validate", "report", "bench", "export", "layers", "sensitivity")


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress",
        description="Compress a PyTorch model with a recipe. Subcommands: validate, report, export, layers, bench, "
        "sensitivity (`compress SUBCOMMAND --help`).",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML file (see recipes/)")
    _model_arguments(p)
    p.add_argument("--out", help="artifact directory (default: runs/<recipe>-<timestamp>)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory (and discard an interrupted run's checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same recipe, model and --out from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--eval-tokens", type=int, default=None, metavar="N",
                   help="score the held-out metric (built-in models) on at most N tokens (default: the whole split)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


def _validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress validate", description="Validate recipes without running them.")
    p.add_argument("recipes", nargs="*", help="recipe files")
    p.add_argument("--list", action="store_true", help="list the available passes and their options")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress report", description="Show the report of an artifact directory.")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="print one JSON object (layers, totals, ...)")
    p.add_argument("--html", metavar="FILE",
                   help="also write a self-contained HTML report (table, charts, a mask picture per layer)")
    p.add_argument("--compare", metavar="OTHER_DIR",
                   help="show this artifact (A) and OTHER_DIR (B) side by side, per layer and with B/A ratios")
    p.add_argument("--force", action="store_true", help="replace an existing --html file")
    return p


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """The options that name the model to load (compress, layers, sensitivity)."""
    p.add_argument("--model", help="built-in name (default lstm-lm), 'file.py:factory', 'pkg.module:factory', "
                                   "or a Hugging Face model directory")
    p.add_argument("--checkpoint", help=".safetensors or state-dict .pt/.bin (weights_only); a pickled module needs "
                                        "--allow-pickle")
    p.add_argument("--allow-pickle", action="store_true", help="allow checkpoints that unpickle Python objects (runs code!)")
    p.add_argument("--input", action="append", default=[], metavar="SPEC",
                   help="example input shape and dtype for tracing, e.g. 2x32:int64 (repeat per input)")


def _layers_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress layers",
                                description="List the layers a recipe can target: name, module class, kind, shape.")
    _model_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object (method, attempts, layers)")
    return p


def _cmd_layers(args) -> int:
    from .capture import capture
    from .loading import load_model
    from .recipe import parse_input_spec

    for i, spec in enumerate(args.input):
        parse_input_spec(spec, f"--input[{i}]")
    spec = load_model(args.model, args.checkpoint, allow_pickle=args.allow_pickle, inputs=tuple(args.input))
    result = capture(spec.model, spec.example_inputs)
    layers = [{"name": t.name, "class": t.module_class, "kind": t.kind, "shape": list(t.shape),
               "gates": [g for g, _, _ in t.gates], "aliases": list(t.aliases)} for t in result.targets]
    if args.json:
        print(json.dumps({"method": result.method, "attempts": [list(a) for a in result.attempts], "layers": layers}))
        return 0
    width = max((len(t["name"]) for t in layers), default=4)
    print(f"{'layer':<{width}}  {'class':<20} {'kind':<10} shape")
    for t in layers:
        extra = (f"  gates {''.join(t['gates'])}" if t["gates"] else "") + \
                (f"  tied: {', '.join(t['aliases'])}" if t["aliases"] else "")
        print(f"{t['name']:<{width}}  {t['class']:<20} {t['kind']:<10} {'x'.join(map(str, t['shape']))}{extra}")
    print(f"capture: {result.method} ({'; '.join(f'{m}: {why}' for m, why in result.attempts)})")
    return 0


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress export", description="Export an artifact to ONNX, verified in ONNX Runtime.")
    p.add_argument("directory")
    p.add_argument("--no-step", action="store_true", help="skip the single-step graphs of recurrent modules")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest error relative to the output scale")
    p.add_argument("--force", action="store_true", help="replace existing .onnx files")
    p.add_argument("--model", metavar="REF", help="the code that builds an artifact made from a --model factory "
                   "('file.py:function'); loading never runs code the artifact itself names")
    p.add_argument("--allow-pickle", action="store_true", help="load an artifact that holds a pickled module (runs code!)")
    p.add_argument("--dense", metavar="FILE", help="instead of ONNX, write the weights to FILE (safetensors) in the "
                   "dense layout: pruned entries zero plus bool masks __mask__.<name> (outside the artifact)")
    p.add_argument("--hf", metavar="OUT", help="instead of ONNX, write a Hugging Face model directory OUT that "
                   "from_pretrained loads: the weights (pruned entries zero) and every other file of the model's "
                   "directory (config, tokenizer, ...), checked by loading it back")
    p.add_argument("--source", metavar="DIR", help="with --hf: copy the non-weight files from DIR instead of the "
                   "directory the artifact was made from (its config.json must describe the same model)")
    return p


def _cmd_export(args) -> int:
    from .artifacts import load, read_metadata, write_dense
    from .errors import ArtifactError, CompressorError
    from .export import export_model, recurrent_graph_note, step_graph_note, token_axes

    if args.hf and args.dense:
        raise CompressorError("--hf and --dense write different things; choose one")
    if args.source and not args.hf:
        raise CompressorError("--source names the files of a Hugging Face export; use it with --hf OUT")
    if args.hf:
        from .hf_export import export_hf

        r = export_hf(args.directory, args.hf, source=args.source, force=args.force, tolerance=args.tolerance)
        zeros = sum(r["zeros"].values())
        print(f"{r['out']}: Hugging Face {r['class']} directory: {', '.join(r['weights'])} ({zeros:,} pruned weights "
              f"stored as zeros in {len(r['zeros'])} tensors) and {len(r['files'])} files from the model's directory "
              f"({', '.join(r['files'][:6])}{' ...' if len(r['files']) > 6 else ''}); loaded back with "
              f"{r['class']}.from_pretrained: max abs error {r['max_abs_error']:.3g}, max rel error "
              f"{r['max_rel_error']:.3g} against the artifact")
        return 0
    if args.dense:
        path = write_dense(args.directory, args.dense, force=args.force)
        print(f"{path}: dense weights and masks (format 1), {path.stat().st_size:,} bytes")
        return 0

    meta = read_metadata(args.directory)
    existing = sorted(p.name for p in Path(args.directory).glob("*.onnx"))
    if existing and not args.force:
        raise ArtifactError(f"{args.directory} already has {', '.join(existing)}; pass --force to replace")
    model = load(args.directory, allow_pickle=args.allow_pickle, model=args.model)
    results = export_model(model, meta.get("inputs", []), args.directory, step=not args.no_step,
                           dynamic=token_axes(meta["source"]),
                           tolerance=args.tolerance)
    for r in results.values():
        print(f"{r['file']}: max abs error {r['max_abs_error']:.3g}, max rel error {r['max_rel_error']:.3g} "
              f"(ONNX Runtime vs torch, {r['trials']} fresh inputs)")
    for path, choice in results["model"].get("recurrent", {}).items():
        print(f"model.onnx: {path} {recurrent_graph_note(choice)}")
    for name, entry in results.items():
        if note := step_graph_note(entry):
            print(f"{name}: {note}")
    return 0


def _sensitivity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compress sensitivity",
        description="Prune each layer of the recipe's first one-shot pass (sparsegpt or wanda) alone at several "
        "sparsities, measure the model, and write the curves, a chart and a recipe that shares the budget by them.")
    p.add_argument("--recipe", required=True, help="recipe YAML file with a sparsegpt or wanda pass (unstructured)")
    p.add_argument("--out", help="output directory (default: runs/sensitivity-<recipe>); a rerun resumes it")
    p.add_argument("--sparsities", default="0.3,0.5,0.7,0.9", help="comma-separated sparsities, each in (0, 1)")
    p.add_argument("--budget", type=float, help="the budget of the recipe it writes (default: the pass's sparsity)")
    p.add_argument("--eval-tokens", type=int, default=None, metavar="N",
                   help="score the held-out metric (built-in models) on at most N tokens (default: the whole split)")
    _model_arguments(p)
    p.add_argument("--force", action="store_true", help="discard the results already in --out and start over")
    return p


def _cmd_sensitivity(args) -> int:
    import torch
    from rich.console import Console

    from .errors import CompressorError
    from .loading import load_model
    from .recipe import load_recipe, parse_input_spec
    from .sensitivity import check_grid, oneshot_step, render_table, sweep

    recipe = load_recipe(args.recipe)
    for i, spec in enumerate(args.input):
        parse_input_spec(spec, f"--input[{i}]")
    try:
        sparsities = [float(v) for v in args.sparsities.split(",") if v.strip()]
    except ValueError:
        raise CompressorError(f"--sparsities {args.sparsities!r}: expected numbers separated by commas, e.g. "
                              "0.3,0.5,0.7,0.9") from None
    oneshot_step(recipe)  # every check that needs no model, before it loads
    check_grid(sparsities, args.budget)
    if args.eval_tokens is not None and args.eval_tokens < 256:
        raise CompressorError(f"--eval-tokens {args.eval_tokens}: score at least 256 tokens (a perplexity window is 128)")
    out = Path(args.out) if args.out else Path("runs") / f"sensitivity-{Path(args.recipe).stem}"
    err = Console(stderr=True)
    torch.manual_seed(recipe.seed)
    with err.status("loading the model"):
        spec = load_model(args.model or recipe.model.name, args.checkpoint or recipe.model.checkpoint,
                          allow_pickle=args.allow_pickle, inputs=tuple(args.input) or recipe.model.inputs)
    if args.model or args.checkpoint or args.input:  # the recipe it writes names the model it was measured on
        model = dataclasses.replace(recipe.model, name=args.model or recipe.model.name,
                                    checkpoint=args.checkpoint or recipe.model.checkpoint,
                                    inputs=tuple(args.input) or recipe.model.inputs)
        recipe = dataclasses.replace(recipe, model=model)
    result = sweep(recipe, spec, out, sparsities, args.budget, args.eval_tokens, args.force, err,
                   inputs=[args.recipe, args.checkpoint, args.model])
    render_table(result)
    print(f"{result.evaluated} point(s) measured, {result.reused} found in {out}; wrote "
          f"{', '.join(str(p) for p in result.files)}")
    return 0


def _bench_parser() -> argparse.ArgumentParser:
    from .bench import BENCHMARKS, load_benchmark

    p = argparse.ArgumentParser(prog="compress bench", description="Benchmarks: dense and sparse side by side.")
    sub = p.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, (_, help_text) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        try:
            load_benchmark(name).add_arguments(sp)
        except ImportError as exc:  # a benchmark whose module is not available in this install
            sp.set_defaults(unavailable=str(exc))
    return p


def _cmd_run(args) -> int:
    from rich.console import Console

    from .distributed import init_from_env
    from .errors import CompressorError
    from .outputs import check_output, claim_output, named_paths
    from .recipe import load_recipe, parse_input_spec

    recipe = load_recipe(args.recipe)
    for i, spec in enumerate(args.input):
        parse_input_spec(spec, f"--input[{i}]")
    if args.eval_tokens is not None and args.eval_tokens < 256:
        raise CompressorError(f"--eval-tokens {args.eval_tokens}: score at least 256 tokens (a perplexity window is 128)")
    if args.resume and not args.out:
        raise CompressorError("--resume needs the --out directory of the interrupted run")
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    inputs = named_paths([args.recipe, args.model, args.checkpoint, recipe.to_dict()])
    info = init_from_env()
    err = Console(stderr=True) if info.is_main else Console(file=io.StringIO())
    with ExitStack() as claims:
        if info.is_main:  # before the model loads: a bad --out costs nothing, a second run to it fails now
            leftovers: list[str] = []
            claims.enter_context(claim_output(out, args.force, inputs, notes=leftovers))
            for note in leftovers:
                err.print(note)
        else:
            check_output(out, args.force, inputs)
        return _compress(args, recipe, out, info, err)


def _compress(args, recipe, out: Path, info, err) -> int:
    import torch

    from .loading import load_model
    from .pipeline import Pipeline
    from .report import render_report

    torch.manual_seed(recipe.seed)  # a factory that initialises weights randomly builds the same model every run
    with err.status("loading the model"):
        spec = load_model(
            args.model or recipe.model.name,
            args.checkpoint or recipe.model.checkpoint,
            allow_pickle=args.allow_pickle,
            inputs=tuple(args.input) or recipe.model.inputs,
        )
    # the resolved recipe records what was compressed, command-line choices included
    builtin = spec.source.get("name") if spec.source.get("kind") == "builtin" else None  # the default model
    model = dataclasses.replace(recipe.model, name=args.model or recipe.model.name or builtin,
                                checkpoint=args.checkpoint or recipe.model.checkpoint,
                                inputs=tuple(args.input) or recipe.model.inputs)
    recipe = dataclasses.replace(recipe, model=model)
    result = Pipeline(recipe).run(spec, out=out, force=args.force, console=err, resume=args.resume,
                                  eval_tokens=args.eval_tokens)
    if not info.is_main:
        return 0
    if args.json:
        print(result.report.to_json())
    else:
        render_report(result.report)
        print(f"artifacts: {out}")
    return 0


def _cmd_validate(args) -> int:
    from .config import config_to_dict
    from .errors import CompressorError
    from .passes import available_passes
    from .recipe import load_recipe

    if args.list:
        for name, spec in available_passes().items():
            defaults = config_to_dict(spec.config_cls())
            print(f"{name}: {spec.doc.splitlines()[0] if spec.doc else ''}")
            print(f"    kinds: {', '.join(spec.kinds)}; options (defaults): {json.dumps(defaults)}")
    if not args.recipes and not args.list:
        raise CompressorError("validate: name at least one recipe file (or pass --list)")
    for path in args.recipes:
        recipe = load_recipe(path)
        print(f"{path}: ok ({len(recipe.passes)} pass(es): {', '.join(p.name for p in recipe.passes)})")
    return 0


def _cmd_report(args) -> int:
    from .artifacts import read_report
    from .report import compare_reports, render_comparison, render_report

    report = read_report(args.directory)
    if args.html:
        _check_html_path(Path(args.html), [args.directory, args.compare], args.force)
    view = report
    if args.compare:
        view = compare_reports(report, read_report(args.compare), args.directory, args.compare)
    if args.html:
        from .report_html import artifact_html, write_html

        write_html(args.html, artifact_html(args.directory, args.compare), force=args.force)  # the page the tests check
    if args.json:
        print(view.to_json())
    elif args.compare:
        render_comparison(view)
    else:
        render_report(report)
    if args.html:
        print(f"html report: {args.html}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _check_html_path(path: Path, artifacts: list[str | None], force: bool) -> None:
    """An HTML report never lands inside an artifact (it could replace model.safetensors) and
    replaces an existing file only with --force."""
    from .errors import CompressorError

    target = path.resolve()
    for directory in filter(None, artifacts):
        if Path(directory).resolve() in target.parents:
            raise CompressorError(f"--html {path} lies inside the artifact {directory}; write the page elsewhere")
    if target.exists() and not force:
        raise CompressorError(f"--html {path} exists; pass --force to replace it")


def _cmd_bench(args) -> int:
    from .bench import load_benchmark

    if getattr(args, "unavailable", None):
        raise SystemExit(f"compress bench {args.name}: not available: {args.unavailable}")
    return int(load_benchmark(args.name).run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``compress`` console script."""
    from .errors import CompressorError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    if command is None and argv and not argv[0].startswith("-"):
        print(f"compress: error: unknown subcommand {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}, "
              "or compress with `compress --recipe R`", file=sys.stderr)
        return 2
    parsers = {"validate": _validate_parser, "report": _report_parser, "bench": _bench_parser, "export": _export_parser,
               "layers": _layers_parser, "sensitivity": _sensitivity_parser}
    handlers = {"validate": _cmd_validate, "report": _cmd_report, "bench": _cmd_bench, "export": _cmd_export,
                "layers": _cmd_layers, "sensitivity": _cmd_sensitivity}
    if command is None:
        args = _run_parser().parse_args(argv)
        handler = _cmd_run
    else:
        args = parsers[command]().parse_args(argv[1:])
        handler = handlers[command]
    debug = getattr(args, "debug", False) or bool(os.environ.get("COMPRESSOR_DEBUG"))
    try:
        return handler(args)
    except (CompressorError, OSError, ValueError) as exc:  # OSError: a file or folder the user named
        if debug:
            raise
        message = " ".join(str(exc).split())  # one line
        print(f"compress: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compress: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
