"""``compress bench quality``: does block pruning during fine-tuning keep the LM's quality?

Reproduces the relative claim of Narang et al. (docs/methods.md section 1) on the built-in
character LSTM: starting from the shipped checkpoint, every variant gets the same budget of
fine-tuning steps on the benchmark corpus (Shakespeare and Milton by default, downloaded once):

- ``dense``: plain fine-tuning (the baseline);
- ``block80`` / ``block90``: gradual block pruning (cubic schedule) to 80% / 90% while fine-tuning;
- ``lasso90``: gradual block pruning to 90% combined with a group-lasso penalty.

With ``--distill W`` the pruned variants also learn from a dense teacher (``task.distill_weight``):
the dense variant trained earlier in the same run, or ``--teacher``, the ``dense.pt`` a run with
``--save-dir`` wrote. The teacher's own training is then on top of the pruned variant's budget.
``--init FILE`` starts every variant from such a file instead of the shipped checkpoint: a dense
model trained on the corpus for S steps, pruned in ``--steps`` more, is the usual compression
workflow, and its budget is S + ``--steps`` (compare with a dense run of that many steps).

It reports test perplexity, the relative gap to dense, sparsity and wall time, and writes JSON.

``--gates`` reproduces instead the claim of Hadifar et al. (docs/methods.md section 2) at ``--keep`` (0.5:
half the compute), every variant with the same step budget on the LSTM (``rnn``) weights:

- ``dense``: plain fine-tuning;
- ``dynamic``: the ``dynamic_gate`` pass (``--gate-block`` blocks, ``--gate-rank``, ``--gate-mode``);
- ``static``: gradual magnitude block pruning (same block size) to the density of equal compute,
  ``(kept blocks + gate multiply-adds) / dense`` of the dynamic variant: the gate's cost counts;
- ``blockdiag``: a fixed block-diagonal mask (an n x n grid of blocks per matrix, n = round(1/keep),
  the diagonal kept), then fine-tuning.

It also reports the test perplexity of the gated model at step 0 with either gate initialisation
(``norm`` and ``random``) next to one-shot static pruning, and the measured batch-1 streaming-step
latency (median, interleaved) of the gated LSTM vs the dense step (gate included), of the
static model with block-sparse kernels, and of a 2-layer LSTM of the paper's size (hidden 1536,
block 128, random weights) for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import torch

from .common import machine_info, print_table, standalone, write_json

__all__ = ["add_arguments", "run", "VARIANTS", "GATE_VARIANTS", "blockdiag_mask"]

VARIANTS = ("dense", "block80", "block90", "lasso90")
GATE_VARIANTS = ("dense", "dynamic", "static", "blockdiag")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", default="shakespeare", help="pydoc | shakespeare | a text file")
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps per variant (the same budget for all)")
    parser.add_argument("--block", type=int, default=16, help="square block size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    # 1e-4: the better of 1e-4 / 3e-4 on the 7200-step Shakespeare LM (BENCHMARKS.md). The term's
    # gradient per weight is lasso / block side, against an LM gradient RMS of 1e-4 to 1e-3
    # (scripts/lm_gradient_scale.py): the earlier 2e-5 was 0.1-1% of it and changed nothing measurable.
    parser.add_argument("--lasso", type=float, default=1e-4,
                        help="group-lasso strength of the lasso90 variant (gradual_block_prune's group_lasso, "
                             "on while masks are tightened)")
    parser.add_argument("--prune-end", type=float, default=0.75,
                        help="block variants and the --gates static baseline: fraction of --steps at which pruning "
                             "ends (masks frozen after it; "
                             "the masks are updated every steps/--prune-updates whatever the fraction)")
    parser.add_argument("--prune-start", type=float, default=0.0,
                        help="block variants and the --gates static baseline: fraction of --steps at which pruning "
                             "starts (dense fine-tuning before it)")
    parser.add_argument("--prune-updates", type=int, default=40,
                        help="block variants and the --gates static baseline: mask updates over the whole run "
                             "(freq = steps / this)")
    parser.add_argument("--hidden", type=int, default=0,
                        help="block variants: train an LSTM LM of this hidden size from scratch (same seed for every variant) "
                             "instead of fine-tuning the shipped hidden-256 checkpoint")
    parser.add_argument("--ranking", default="layer", choices=("layer", "global"),
                        help="block variants: every LSTM matrix to the sparsity (layer), or the sparsity over all of "
                             "them together (global)")
    parser.add_argument("--score", default="max_abs", choices=("max_abs", "mean_abs", "l2"),
                        help="block variants: how a block is scored (gradual_block_prune's score)")
    parser.add_argument("--unbalanced", action="store_true",
                        help="block variants: free block pattern (default: balanced, every block row keeps as many blocks)")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)} "
                        f"(with --gates: of {','.join(GATE_VARIANTS)})")
    parser.add_argument("--gates", action="store_true", help="dynamic block gating vs dense, static and block-diagonal")
    parser.add_argument("--keep", type=float, default=0.5, help="--gates: kept fraction of blocks")
    parser.add_argument("--gate-block", type=int, default=64, help="--gates: square block size of the gates")
    parser.add_argument("--gate-rank", type=int, default=0, help="--gates: gate bottleneck (0: full Linear gate)")
    parser.add_argument("--gate-mode", default="global", choices=("global", "row"))
    parser.add_argument("--gate-init", default="random", choices=("random", "norm"), help="--gates: gate initialisation")
    parser.add_argument("--latency-repeats", type=int, default=200, help="--gates: timing rounds of the batch-1 step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every variant: the recipe's seed, the task's batch order and a --hidden "
                             "model's initialisation (run a setting under several seeds to tell a gain from noise)")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="block variants: weight w of distillation from the dense teacher next to the LM loss "
                             "(task.distill_weight; 0: labels only)")
    parser.add_argument("--temperature", type=float, default=1.0, help="--distill: softmax temperature")
    parser.add_argument("--teacher", default=None,
                        help="--distill: the teacher's weights (a --save-dir dense.pt); default: the dense variant "
                             "trained earlier in this run")
    parser.add_argument("--init", default=None,
                        help="block variants and dense: start from these weights (a --save-dir dense.pt, e.g. a dense "
                             "model already fine-tuned on the corpus: pruning a trained model) instead of the shipped "
                             "checkpoint")
    parser.add_argument("--save-dir", default=None,
                        help="write each variant's trained weights to DIR/VARIANT.pt (a state dict; the dense one can "
                             "be a later run's --teacher)")
    parser.add_argument("--json", default="bench-results/quality.json")


def _train(args, distill: bool = False) -> dict:
    """The ``train:`` section every variant of both benches shares (same budget, task and lr);
    ``distill``: with ``--distill``'s term to the teacher."""
    task = {"name": "lm", "corpus": args.corpus, "batch_size": args.batch, "seq_len": args.seq_len, "eval_tokens": 0,
            "seed": args.seed}
    if distill and args.distill:
        task |= {"distill_weight": args.distill, "temperature": args.temperature}
    return {"steps": args.steps, "lr": args.lr, "eval_every": 0, "checkpoint_every": 0, "task": task}


def _prune_schedule(args) -> dict:
    """``start``, ``end`` and ``freq`` of every gradual_block_prune step: pruning runs from
    ``--prune-start`` to ``--prune-end`` of the steps, masks are updated every steps/``--prune-updates``."""
    return {"start": int(args.prune_start * args.steps), "end": max(1, int(args.prune_end * args.steps)),
            "freq": max(1, args.steps // args.prune_updates)}


def _recipe(variant: str, args) -> dict:
    train = _train(args, distill=variant != "dense")
    if variant == "dense":
        step = {"pass": "finetune", "train": train}
    else:
        sparsity = {"block80": 0.8, "block90": 0.9, "lasso90": 0.9}[variant]
        step = {"pass": "gradual_block_prune", "targets": ["rnn"], "block": [args.block, args.block],
                "sparsity": sparsity, **_prune_schedule(args), "balanced": not args.unbalanced,
                "ranking": args.ranking, "score": args.score, "train": train}
        if variant == "lasso90":
            step["group_lasso"] = args.lasso
    return {"version": 1, "seed": args.seed, "passes": [step]}


def run(args) -> int:
    from rich.console import Console

    from .. import Pipeline
    from ..corpus import corpus_text
    from ..recipe import parse_recipe
    from ..tasks import LMTask, TaskConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 < args.prune_end <= 1.0:
        raise SystemExit(f"--prune-end {args.prune_end} is invalid; it is a fraction of --steps in (0, 1]")
    if args.prune_updates < 1:
        raise SystemExit(f"--prune-updates {args.prune_updates} is invalid; must be >= 1")
    if not 0.0 <= args.prune_start < args.prune_end:
        raise SystemExit(f"--prune-start {args.prune_start} is invalid; it is a fraction of --steps in [0, --prune-end)")
    if args.gates:
        if args.distill or args.teacher:
            raise SystemExit("--distill and --teacher are for the block variants, not --gates")
        return run_gates(args)
    variants = [v for v in (args.variants or ",".join(VARIANTS)).split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.teacher and not args.distill:
        raise SystemExit("--teacher is the --distill teacher; give --distill W too")
    for flag, path in (("--teacher", args.teacher), ("--init", args.init)):
        if path and not Path(path).is_file():
            raise SystemExit(f"{flag} {path}: no such file")
    sparse = [v for v in variants if v != "dense"]
    dense_first = "dense" in variants and (not sparse or variants.index("dense") < variants.index(sparse[0]))
    if args.distill and sparse and not args.teacher and not dense_first:
        raise SystemExit("--distill needs a teacher: --teacher FILE, or the dense variant first in --variants")
    parse_recipe(_recipe(sparse[0] if sparse else "dense", args))  # bad --distill / --temperature: before any training
    # read once for every variant; a file that does not fit the model fails at the first variant's start
    init = _read_weights(args.init, "--init") if args.init else None
    corpus_text(args.corpus)  # fetch and cache before any timing
    teacher = _load_teacher(args) if args.distill and args.teacher else None
    rows, results = [], {}
    for variant in variants:
        torch.manual_seed(args.seed)
        spec = _start_model(args, init)
        task = LMTask(TaskConfig(corpus=args.corpus, seq_len=args.seq_len, batch_size=args.batch, eval_tokens=0), spec.vocab)
        before = task.perplexity(spec.model, task.test_ids)
        t0 = time.perf_counter()
        result = Pipeline(parse_recipe(_recipe(variant, args))).run(
            spec, console=Console(file=io.StringIO()), teacher=teacher if variant != "dense" else None)
        seconds = time.perf_counter() - t0
        if variant == "dense" and args.distill and not args.teacher:
            teacher = result.model
        ppl = task.perplexity(result.model, task.test_ids)
        sparsity = sum(r.params - r.nonzero for r in result.report.layers if r.name.startswith("rnn.")) / \
            sum(r.params for r in result.report.layers if r.name.startswith("rnn."))
        layers = {r.name: r.sparsity for r in result.report.layers if r.name.startswith("rnn.")}
        if args.save_dir:
            _save_weights(result.model, Path(args.save_dir) / f"{variant}.pt")
        results[variant] = {"test_perplexity": ppl, "before_finetune": before, "lstm_sparsity": sparsity,
                            "layer_sparsity": layers, "seconds": seconds}
        print(f"{variant}: test perplexity {ppl:.4f} (before fine-tuning {before:.4f}), LSTM sparsity {sparsity:.1%} "
              f"({', '.join(f'{n[4:]} {v:.1%}' for n, v in layers.items())}), {seconds:.0f}s", flush=True)
    dense = results.get("dense", {}).get("test_perplexity")
    for variant, r in results.items():
        gap = f"{(r['test_perplexity'] / dense - 1):+.1%}" if dense else "-"
        rows.append([variant, f"{r['lstm_sparsity']:.1%}", r["test_perplexity"], gap, f"{r['seconds']:.0f}"])
    print_table(f"LM quality after {args.steps} fine-tuning steps on {args.corpus} (test perplexity)",
                ["variant", "LSTM sparsity", "test ppl", "vs dense", "wall s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "results": results})
    print(f"wrote {args.json}")
    return 0


def _start_model(args, init: dict | None = None):
    """The model every variant starts from: the shipped checkpoint or a fresh one at ``--hidden``,
    with ``init`` (the ``--init`` state dict, from :func:`_read_weights`) loaded into it."""
    from .. import load_model

    spec = load_model("lstm-lm")
    spec = _fresh_lm(spec, args.hidden) if args.hidden else spec
    if init is not None:
        _apply_weights(spec.model, init, "--init", args.init)
    return spec


def _load_teacher(args):
    """The ``--teacher`` weights in the starting model's architecture."""
    state = _read_weights(args.teacher, "--teacher")
    return _apply_weights(_start_model(args).model, state, "--teacher", args.teacher).eval()


def _apply_weights(model, state: dict, flag: str, path: str):
    """``model`` with ``state`` loaded; keys or shapes that do not fit exit naming ``flag``."""
    from ..loading import apply_state_dict

    with _refused_as(flag, path):
        apply_state_dict(model, state, path)
    return model


def _read_weights(path: str, flag: str) -> dict:
    """The state dict at ``path``, read as every checkpoint is (``load_state_dict``: safetensors or
    ``weights_only``)."""
    from ..loading import load_state_dict

    with _refused_as(flag, path):
        return load_state_dict(path)


@contextlib.contextmanager
def _refused_as(flag: str, path: str):
    """A ModelLoadError inside (not a checkpoint, not a state dict, keys or shapes that do not match
    the model) becomes a one-line SystemExit naming ``flag``."""
    from ..errors import ModelLoadError

    try:
        yield
    except ModelLoadError as exc:
        raise SystemExit(f"{flag} {path}: {str(exc).splitlines()[0][:300]}") from None


def _save_weights(model, path: Path) -> None:
    """The trained weights as a plain state dict (loadable with ``torch.load(weights_only=True)``),
    written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


# -- --gates: dynamic block gating (Hadifar et al.) ---------------------------------------------


def _fresh_lm(spec, hidden: int):
    """The built-in LM's architecture and vocabulary at another hidden size, randomly initialised
    (seeded by the caller), for measuring how the pruning gap depends on model size."""
    import dataclasses

    from ..loading import no_metric
    from ..models.lstm_lm import LSTMLanguageModel

    model = LSTMLanguageModel(dataclasses.replace(spec.model.config, hidden=hidden))
    source = {**spec.source, "config": {**spec.source["config"], "hidden": hidden}}
    return dataclasses.replace(spec, model=model, example_inputs=model.example_inputs(), source=source,
                               evaluate=no_metric)


def blockdiag_mask(shape: tuple[int, int], n: int) -> torch.Tensor:
    """Bool ``(out, in)`` mask: an ``n x n`` grid of blocks, the diagonal blocks kept (fraction 1/n)."""
    rows = torch.arange(shape[0]) * n // shape[0]  # (out,) block row of every row
    cols = torch.arange(shape[1]) * n // shape[1]  # (in,)
    return rows[:, None] == cols[None, :]


def _gate_recipe(variant: str, args, static_sparsity: float) -> dict:
    train = _train(args)
    block = [args.gate_block, args.gate_block]
    if variant in ("dense", "blockdiag"):
        step = {"pass": "finetune", "train": train}
    elif variant == "dynamic":
        step = {"pass": "dynamic_gate", "targets": ["rnn"], "block": block, "keep": args.keep, "mode": args.gate_mode,
                "rank": args.gate_rank, "init": args.gate_init, "latency_repeats": 0, "train": train}
    else:
        step = {"pass": "gradual_block_prune", "targets": ["rnn"], "block": block, "sparsity": round(static_sparsity, 6),
                **_prune_schedule(args), "train": train}
    return {"version": 1, "seed": args.seed, "passes": [step]}


def _rnn_weights(rnn) -> dict:
    return {n: p for n, p in rnn.named_parameters() if n.startswith("weight_")}


def _step_timings(model_rnn, static_rnn, block: int, args) -> dict:
    """Batch-1 streaming-step medians (ms): dense, gated, static block-sparse; one interleaved run."""
    from ..kernels import GatedLSTM, SparseLSTM
    from .common import time_interleaved

    dense = SparseLSTM.from_dense(model_rnn.to_dense(), {}).eval()
    fns = {"dense": dense.step, "gated": model_rnn.eval().step}
    if static_rnn is not None:
        masks = {n: w.detach() != 0 for n, w in _rnn_weights(static_rnn).items()}
        fns["static"] = SparseLSTM.from_dense(static_rnn, masks, (block, block)).eval().step
    xs = [torch.randn(1, dense.input_size) for _ in range(4)]
    with torch.no_grad():
        t = time_interleaved({k: (lambda r, f=f: f(xs[r % 4])) for k, f in fns.items()}, repeats=args.latency_repeats)
    out = {k: v["median_s"] * 1e3 for k, v in t.items()}
    # the paper's size, random weights, for scale
    big = torch.nn.LSTM(1536, 1536, 2)
    gated = GatedLSTM.from_dense(big, None, (128, 128), args.keep, args.gate_mode, args.gate_rank).eval()
    big_dense = SparseLSTM.from_dense(big, {}).eval()
    xb = [torch.randn(1, 1536) for _ in range(4)]
    with torch.no_grad():
        t = time_interleaved({"dense": lambda r: big_dense.step(xb[r % 4]), "gated": lambda r: gated.step(xb[r % 4])},
                             repeats=max(10, args.latency_repeats // 4))
    out["paper_size_dense"], out["paper_size_gated"] = t["dense"]["median_s"] * 1e3, t["gated"]["median_s"] * 1e3
    return out


def run_gates(args) -> int:
    """The --gates benchmark (see the module docstring)."""
    import copy

    from rich.console import Console

    from .. import Pipeline, capture, load_model
    from .. import masks as masklib
    from ..corpus import corpus_text
    from ..kernels import GatedLSTM
    from ..passes.block_prune import layer_block_mask
    from ..patterns import Gated
    from ..recipe import parse_recipe
    from ..tasks import LMTask, TaskConfig

    variants = [v for v in (args.variants or ",".join(GATE_VARIANTS)).split(",") if v]
    unknown = [v for v in variants if v not in GATE_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(GATE_VARIANTS)}")
    if args.json == "bench-results/quality.json":
        args.json = "bench-results/quality-gates.json"
    corpus_text(args.corpus)
    spec = load_model("lstm-lm")
    task = LMTask(TaskConfig(corpus=args.corpus, seq_len=args.seq_len, batch_size=args.batch, eval_tokens=0), spec.vocab)
    pattern = Gated(args.gate_block, args.gate_block, args.keep, args.gate_mode, args.gate_rank)
    shapes = [tuple(w.shape) for w in _rnn_weights(spec.model.rnn).values()]
    dense_macs = sum(o * i for o, i in shapes)
    gated_frac = sum(pattern.flops(s) for s in shapes) / (2 * dense_macs)
    gate_frac = sum(pattern.gate_macs(s) for s in shapes) / dense_macs
    static_sparsity = 1.0 - gated_frac
    print(f"LSTM weights {dense_macs / 1e3:.0f}K MACs/token; dynamic keep {args.keep} with {args.gate_block}x{args.gate_block} "
          f"blocks costs {gated_frac:.1%} of dense (gates {gate_frac:.1%}) -> static block pruning to sparsity "
          f"{static_sparsity:.1%} at equal compute", flush=True)
    results: dict = {"equal_compute": {"dynamic_fraction": gated_frac, "gate_fraction": gate_frac,
                                       "static_sparsity": static_sparsity}}
    # step 0: how the gate initialisation starts (no training)
    init = {"dense": task.perplexity(spec.model, task.test_ids)}
    for how in ("norm", "random"):
        m = copy.deepcopy(spec.model)
        m.rnn = GatedLSTM.from_dense(m.rnn, None, (args.gate_block,) * 2, args.keep, args.gate_mode, args.gate_rank, how)
        init[f"gated_{how}_init"] = task.perplexity(m, task.test_ids)
    m = copy.deepcopy(spec.model)
    for t in [t for t in capture(m, spec.example_inputs).targets if t.module_path == "rnn"]:
        w = getattr(m.rnn, t.param_name)
        with torch.no_grad():
            w.mul_(layer_block_mask(w.detach(), t, (args.gate_block,) * 2, "max_abs", static_sparsity, False, False))
    init["static_oneshot"] = task.perplexity(m, task.test_ids)
    results["step0"] = init
    print("step 0 test perplexity: " + ", ".join(f"{k} {v:.3f}" for k, v in init.items()), flush=True)
    models = {}
    for variant in variants:
        torch.manual_seed(args.seed)
        spec = load_model("lstm-lm")
        n = round(1 / args.keep)
        if variant == "blockdiag":
            for name, w in _rnn_weights(spec.model.rnn).items():
                masklib.set_mask(spec.model, f"rnn.{name}", blockdiag_mask(tuple(w.shape), n))
        t0 = time.perf_counter()
        result = Pipeline(parse_recipe(_gate_recipe(variant, args, static_sparsity))).run(spec, console=Console(file=io.StringIO()))
        seconds = time.perf_counter() - t0
        models[variant] = result.model
        ppl = task.perplexity(result.model, task.test_ids)
        if variant == "dynamic":
            compute = gated_frac
        else:
            ws = _rnn_weights(result.model.rnn)
            compute = sum(float((w != 0).sum()) for w in ws.values()) / dense_macs
        results[variant] = {"test_perplexity": ppl, "compute_fraction": compute, "seconds": seconds}
        print(f"{variant}: test perplexity {ppl:.4f}, LSTM compute {compute:.1%} of dense, {seconds:.0f}s", flush=True)
    if "dynamic" in models:
        lat = _step_timings(models["dynamic"].rnn, models["static"].rnn if "static" in models else None, args.gate_block, args)
        results["step_latency_ms"] = lat
        print("batch-1 step (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in lat.items()), flush=True)
    dense = results.get("dense", {}).get("test_perplexity")
    lat = results.get("step_latency_ms", {})
    speed = {"dynamic": ("dense", "gated"), "static": ("dense", "static")}
    rows = []
    for v in variants:
        r = results[v]
        gap = f"{(r['test_perplexity'] / dense - 1):+.1%}" if dense else "-"
        pair = speed.get(v)
        sp = f"{lat[pair[0]] / lat[pair[1]]:.2f}x" if pair and pair[1] in lat else ("1.00x" if v == "dense" and lat else "-")
        rows.append([v, f"{r['compute_fraction']:.1%}", r["test_perplexity"], gap, sp, f"{r['seconds']:.0f}"])
    print_table(f"LSTM LM after {args.steps} steps on {args.corpus}, keep {args.keep} (test perplexity)",
                ["variant", "LSTM compute", "test ppl", "vs dense", "batch-1 step speed-up", "wall s"], rows)
    write_json(args.json, {"machine": machine_info(), "args": vars(args), "results": results})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(standalone("quality", add_arguments, run, __doc__))
