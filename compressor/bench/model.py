"""``compress bench model DIR``: an artifact's compressed model against its dense counterpart.

The dense counterpart is the same architecture holding the same (masked) weights in plain dense
modules (:func:`compressor.swaps.densify`; gated modules become dense modules with every stored
weight, so a gated model is timed against the dense model it came from). Everything runs side by
side in one process, interleaved round by round (:func:`compressor.bench.common.time_interleaved`),
rotating ``--copies`` copies of each model (deep copies or ONNX Runtime sessions, each with its
own weights) and of the inputs; the table shows medians and ratios, the JSON every row. Sections:

* ``torch``: the model's forward on fresh random inputs of the shapes recorded in the artifact
  (or ``--input``);
* ``step``: one streaming step of every unidirectional recurrent layer the compressed model runs
  with a sparse module (``SparseLSTM``/``SparseGRU`` and the gated ones): stacked
  ``nn.LSTMCell``/``nn.GRUCell`` with the dense weights (the ``dense`` row), the dense
  ``nn.LSTM``/``nn.GRU`` called on a length-1 sequence, and the module's ``step``;
* ``onnx``: ONNX Runtime on the dense counterpart's export vs on the compressed model's export,
  and the same for each recurrent layer's single-step graph. Both are written by
  :func:`compressor.export.export_model` to a temporary directory, so each is checked against
  torch before it is timed. Where DeepSparse runs (``deepsparse`` imports here, or
  ``--deepsparse-python PATH`` names an interpreter that has it; :mod:`compressor.bench.engines`),
  ``model.onnx`` gets a third row: ``deepsparse.Engine`` on the dense export with its zeros as
  plain initializers, the same inputs, checked against ORT's outputs first; the compressed row
  then carries its speed-up over DeepSparse. Otherwise one line says why there is no such row.

A model without sparse kernel modules (no ``swap_kernels`` in the recipe, or every layer
declined) runs the same dense ops in both columns; the benchmark says so.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from compressor.timing import paired_ratio

from .common import cells_step, machine_info, print_table, rnn_cells, time_interleaved, timing_row, write_json

__all__ = ["add_arguments", "run", "noise_warnings", "SECTIONS"]

SECTIONS = ("torch", "step", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``compress bench model``."""
    parser.add_argument("directory", help="artifact directory written by compress")
    parser.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]",
                        help="example input shape, once per model input (e.g. 1x64:int64; default: the shapes "
                             "recorded in the artifact); integer inputs keep the artifact's value range")
    parser.add_argument("--step-batch", type=int, default=1, help="batch size of the streaming-step rows")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per copy before the timed rounds")
    parser.add_argument("--copies", type=int, default=4, help="model/input copies rotated per row")
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads (default: torch's)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="the artifact holds a pickled module (module.pt): load it (only for files you trust)")
    parser.add_argument("--model", default=None, metavar="REF",
                        help="the code that builds an artifact made from a --model factory ('file.py:function'); "
                             "loading never runs code the artifact itself names")
    parser.add_argument("--deepsparse-python", default=None, metavar="PATH",
                        help="onnx: time DeepSparse on the dense export through this interpreter (a separate venv "
                             "with deepsparse==1.8.0, which cannot share ours; README); without it the row runs "
                             "only where deepsparse imports in this environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default bench-results/model-<time>.json)")


def _validate(args: argparse.Namespace) -> tuple[list[str], dict, list[dict]]:
    """Check the arguments and read the artifact's metadata before any model is built; returns the
    sections, the metadata and the input specs."""
    from compressor.artifacts import read_metadata
    from compressor.errors import CompressorError

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise CompressorError(f"--sections {args.sections!r}: unknown {unknown or 'empty'}; choose from {', '.join(SECTIONS)}")
    for flag in ("repeats", "copies", "step_batch"):
        if getattr(args, flag) < 1:
            raise CompressorError(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    if args.warmup < 0:
        raise CompressorError(f"--warmup must be 0 or more (got {args.warmup})")
    if args.threads is not None and args.threads < 1:
        raise CompressorError(f"--threads must be at least 1 (got {args.threads})")
    if not Path(args.directory).is_dir():
        raise CompressorError(f"{args.directory}: no such artifact directory")
    meta = read_metadata(args.directory)  # ArtifactError when it is not an artifact
    if args.deepsparse_python is not None and "onnx" not in sections:
        raise CompressorError(f"--deepsparse-python times the onnx section, which --sections {args.sections!r} leaves out")
    specs = _input_specs(args.input, meta.get("inputs", []))
    if not specs and {"torch", "onnx"} & set(sections):
        raise CompressorError(f"{args.directory} records no example inputs; pass --input SHAPE[:DTYPE] per model input")
    return sections, meta, specs


def _input_specs(texts: list[str], recorded: list[dict]) -> list[dict]:
    """Input specs in the artifact's format; ``--input`` overrides shapes, integer ranges stay."""
    from compressor.recipe import parse_input_spec

    if not texts:
        return recorded
    specs = []
    for i, text in enumerate(texts):
        shape, dtype = parse_input_spec(text, f"--input[{i}]")
        spec = {"shape": list(shape), "dtype": dtype}
        if i < len(recorded) and "high" in recorded[i]:
            spec["high"] = recorded[i]["high"]
        specs.append(spec)
    return specs


def _pair(section: str, case: str, dense_fn, ours_fn, args, extra: dict | None = None, others: dict | None = None,
          versus: tuple[str, str] | None = None) -> list[dict]:
    """Time ``dense`` and ``compressed`` (and ``others``, more references) side by side.
    ``versus`` ``(key, name)``: the compressed row also gets its speed-up over ``others[name]``
    (``speedup_vs_<key>``, with its noise band ``<key>_ratio_low/high``)."""
    fns = {"dense": dense_fn, **(others or {}), "compressed": ours_fn}
    t = time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, copies=args.copies)
    ref = t["dense"]["median_s"]
    rows = [timing_row(section, case, name, t[name], ref, extra) for name in fns]
    band = paired_ratio(t["dense"]["samples_s"], t["compressed"]["samples_s"])  # the compressed row's noise band
    rows[-1].update(ratio_low=band["low"], ratio_high=band["high"])
    if versus is not None:
        key, name = versus
        band = paired_ratio(t[name]["samples_s"], t["compressed"]["samples_s"])
        rows[-1].update({f"speedup_vs_{key}": t[name]["median_s"] / t["compressed"]["median_s"],
                         f"{key}_ratio_low": band["low"], f"{key}_ratio_high": band["high"]})
    return rows


def noise_warnings(rows: list[dict], same_ops: bool) -> list[str]:
    """When both columns run the same ops (no kernel module in the artifact), a compressed/dense ratio
    whose 95% interval excludes 1 is the machine's noise, not a result: say so (a loaded machine once
    printed 0.57x for two identical dense columns)."""
    if not same_ops:
        return []
    return [f"{r['case']}: identical columns measured {r['speedup_vs_dense']:.2f}x (95% interval "
            f"{r['ratio_low']:.2f}-{r['ratio_high']:.2f}x): the machine is too noisy for these figures"
            for r in rows if "ratio_low" in r and not r["ratio_low"] <= 1.0 <= r["ratio_high"]]


# -- sections ----------------------------------------------------------------------------------

def bench_torch(ours: list[nn.Module], dense: list[nn.Module], inputs: list[tuple], args) -> list[dict]:
    n = args.copies
    shapes = ", ".join("x".join(map(str, x.shape)) for x in inputs[0])
    return _pair("torch", f"forward ({shapes})", lambda i: dense[i % n](*inputs[i % n]),
                 lambda i: ours[i % n](*inputs[i % n]), args)


def _recurrent(model: nn.Module) -> list[str]:
    """Paths of the unidirectional sparse recurrent modules (the ones with a streaming step)."""
    from compressor.kernels import SparseGRU, SparseLSTM

    return [path for path, m in model.named_modules() if isinstance(m, (SparseLSTM, SparseGRU)) and not m.bidirectional]


def bench_step(ours: list[nn.Module], args, gen: torch.Generator) -> list[dict]:
    from compressor.kernels import SparseLSTM

    n, B = args.copies, args.step_batch
    rows = []
    for path in _recurrent(ours[0]):
        mods = [m.get_submodule(path) for m in ours]
        rnns = [m.to_dense() for m in mods]
        cells = [rnn_cells(r) for r in rnns]
        rnn = mods[0]
        lstm = isinstance(rnn, SparseLSTM)
        kind = "LSTM" if lstm else "GRU"
        xs = [torch.randn(B, rnn.input_size, generator=gen) for _ in range(n)]
        shape = (rnn.num_layers, B, rnn.hidden_size)
        states = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) if lstm
                  else torch.randn(shape, generator=gen) for _ in range(n)]
        case = (f"{path} {type(rnn).__name__} {rnn.num_layers}x{rnn.hidden_size} step, batch {B} "
                f"(dense: nn.{kind}Cell x {rnn.num_layers})")
        # the module's own one-step call: nn.LSTM/nn.GRU on a length-1 sequence (slow on CPU)
        seq_dim = 1 if rnn.batch_first else 0
        one_step = {f"nn.{kind} one-step call": lambda i, r=rnns: r[i % n](xs[i % n].unsqueeze(seq_dim), states[i % n])}
        rows += _pair("step", case, lambda i, c=cells: cells_step(c[i % n], xs[i % n], states[i % n]),
                      lambda i, m=mods: m[i % n].step(xs[i % n], states[i % n]), args,
                      {"dense_impl": f"nn.{kind}Cell x layers"}, one_step)
    return rows


DEEPSPARSE = "DeepSparse 1.8.0 (dense zero-filled ONNX)"
#: DeepSparse's outputs may differ from ORT's by more than float rounding (its own kernels) but no more than this,
#: relative to each output's largest magnitude
DEEPSPARSE_TOLERANCE = 1e-3


def bench_onnx(ours: nn.Module, dense: nn.Module, specs: list[dict], args, gen: torch.Generator,
               deepsparse_python: str | None = None, notes: list[str] | None = None) -> list[dict]:
    """ORT on both exports per graph; ``deepsparse_python``: also DeepSparse on ``model.onnx``
    (a line about it goes to ``notes``)."""
    from compressor.export import export_model, fresh_inputs, recurrent_graph_note, step_graph_note
    from compressor.kernels import ort_session

    notes = [] if notes is None else notes
    n = args.copies
    threads = args.threads or torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
        written = {}
        for name, model in (("dense", dense), ("compressed", ours)):
            os.mkdir(os.path.join(tmp, name))
            written[name] = export_model(model, specs, os.path.join(tmp, name), step_batch=args.step_batch)  # checked
        for path, choice in written["compressed"]["model"].get("recurrent", {}).items():
            notes.append(f"model.onnx: {path} {recurrent_graph_note(choice)}")  # which graph the rows time
        notes += [f"{name}: {note}" for name, entry in written["compressed"].items()
                  if (note := step_graph_note(entry))]
        graphs = [g for g in written["compressed"] if g in written["dense"]]
        for graph in graphs:
            # a pool per session without spinning: 2n sessions share the cores (see bench kernels)
            sessions = {name: [ort_session(os.path.join(tmp, name, written[name][graph]["file"]), threads=threads,
                                           spin=False) for _ in range(n)] for name in written}
            names = [i.name for i in sessions["dense"][0].get_inputs()]
            if graph == "model":
                feeds = [dict(zip(names, (t.numpy() for t in fresh_inputs(specs, gen)))) for _ in range(n)]
                case = "model.onnx"
            else:  # x_t and the states, at the static shapes of the export (batch --step-batch)
                shapes = [i.shape for i in sessions["dense"][0].get_inputs()]
                feeds = [{nm: torch.randn(shape, generator=gen).numpy() for nm, shape in zip(names, shapes)}
                         for _ in range(n)]
                case = f"{written['compressed'][graph]['file']}, batch {args.step_batch}"
            worker = err = None
            if graph == "model" and deepsparse_python:
                worker, err = _deepsparse_worker(deepsparse_python, tmp, written["dense"][graph]["file"],
                                                 sessions["dense"][0], names, feeds, threads, notes)
            try:
                new = _pair("onnx", case, lambda i, s=sessions["dense"], f=feeds: s[i % n].run(None, f[i % n]),
                            lambda i, s=sessions["compressed"], f=feeds: s[i % n].run(None, f[i % n]), args,
                            {"max_rel_error": written["compressed"][graph]["max_rel_error"]},
                            {DEEPSPARSE: worker.run} if worker else None, ("deepsparse", DEEPSPARSE) if worker else None)
            finally:
                if worker is not None:
                    worker.close()
            for r in new:
                if r["impl"] == DEEPSPARSE:  # its own check: against ORT on the dense export
                    r.update(max_rel_error=err, engine=worker.engine)
            rows += new
    return rows


def _deepsparse_worker(python: str, tmp: str, dense_file: str, ort_dense, names: list[str], feeds: list[dict],
                       threads: int, notes: list[str]):
    """``(worker, error)``: a started DeepSparse worker on the dense export whose outputs match ORT's
    and their max error, or ``(None, None)`` with a line in ``notes`` saying why not (DeepSparse
    failed to build or run the graph, or its outputs differ)."""
    from compressor.export import max_errors

    from .engines import DeepSparseWorker, deepsparse_onnx

    try:
        path = deepsparse_onnx(os.path.join(tmp, "dense", dense_file), os.path.join(tmp, "deepsparse.onnx"))
        worker = DeepSparseWorker(python, path, [[f[nm] for nm in names] for f in feeds], threads, tmp)
    except Exception as e:  # noqa: BLE001  (an engine that cannot take the graph is a result, not a crash)
        notes.append(f"DeepSparse row not run: {' '.join(str(e).split())[:300]}")
        return None, None
    expected = [torch.from_numpy(a) for a in ort_dense.run(None, feeds[0])]
    _, err = max_errors(expected, worker.outputs[0])
    if not err <= DEEPSPARSE_TOLERANCE:
        worker.close()
        notes.append(f"DeepSparse row not run: its outputs differ from ORT's on the dense export (max error {err:.2e} "
                     f"of the largest output, allowed {DEEPSPARSE_TOLERANCE:g})")
        return None, None
    notes.append(f"DeepSparse: {worker.engine} (outputs match ORT's: max error {err:.1e} of the largest output)")
    return worker, err


# -- driver ------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Validate, load the artifact, run the sections, print one table, write JSON; returns 0."""
    from compressor.artifacts import load
    from compressor.export import fresh_inputs
    from compressor.swaps import densify

    sections, meta, specs = _validate(args)
    notes: list[str] = []
    deepsparse_python = None
    if "onnx" in sections:
        from .engines import deepsparse_interpreter

        deepsparse_python, line = deepsparse_interpreter(args.deepsparse_python)  # CompressorError on a bad flag
        if deepsparse_python is None:
            notes.append(line)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    model = load(args.directory, allow_pickle=args.allow_pickle, model=args.model)
    dense = densify(model, gated=True).eval()
    kernels = collections.Counter(r["kind"] for r in meta.get("replacements", []))
    info = machine_info()
    info["load_average_start"] = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict] = []
    ours = [model] + [copy.deepcopy(model) for _ in range(args.copies - 1)]
    denses = [dense] + [copy.deepcopy(dense) for _ in range(args.copies - 1)]
    with torch.inference_mode():
        if "torch" in sections:
            inputs = [fresh_inputs(specs, gen) for _ in range(args.copies)]
            rows += bench_torch(ours, denses, inputs, args)
        if "step" in sections:
            rows += bench_step(ours, args, gen)
    if "onnx" in sections:
        rows += bench_onnx(model, dense, specs, args, gen, deepsparse_python, notes)
    info["load_average_end"] = os.getloadavg()
    info["elapsed_s"] = time.perf_counter() - t0
    if kernels:
        print("sparse kernel modules: " + ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items())))
    else:
        print("no sparse kernel modules in this artifact (swap_kernels not in its recipe, or it declined every "
              "layer): both columns run the same dense ops")
    info["engine_notes"] = notes
    for line in notes:
        print(line)
    info["noise_warnings"] = noise_warnings(rows, same_ops=not kernels)
    for warning in info["noise_warnings"]:
        print(f"WARNING {warning} (load average {info['load_average_end'][0]:.1f})")
    columns = ["case", "impl", "median us", "min us", "x dense"]
    deepsparse = any("speedup_vs_deepsparse" in r for r in rows)
    print_table(f"bench model: {args.directory}", columns + (["x DeepSparse"] if deepsparse else []),
                [[r["case"], r["impl"], r["median_us"], r["min_us"], r["speedup_vs_dense"]]
                 + ([r.get("speedup_vs_deepsparse", "")] if deepsparse else []) for r in rows])
    path = args.json or os.path.join("bench-results", f"model-{time.strftime('%Y%m%d-%H%M%S')}.json")
    payload = {"benchmark": "model", "command": " ".join(sys.argv), "artifact": str(args.directory),
               "kernel_modules": dict(kernels), "machine": info,
               "args": {k: v for k, v in vars(args).items() if k != "func"}, "rows": rows}
    print(f"wrote {write_json(path, payload)}  ({info['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    from compressor.bench.common import standalone

    raise SystemExit(standalone("model", add_arguments, run, __doc__))
