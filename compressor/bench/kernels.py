"""``compress bench kernels``: sparse kernels vs dense on CPU, in torch and in ONNX Runtime.

Everything runs side by side in one process, interleaved round by round
(:func:`compressor.bench.common.time_interleaved`), rotating ``--copies`` weight copies and
inputs so that caches do not flatter any row; the table shows medians and ratios and the JSON has
every row. Sections:

* ``linear``: dense ``F.linear``, torch BSR (``to_sparse_bsr`` + ``torch.sparse.mm``) and our
  :class:`~compressor.kernels.BlockSparseLinear` (balanced layout; also its BSR layout on the
  same mask, the fallback for unbalanced masks) per block size, sparsity and batch size, beside
  other engines on the same weights (:mod:`compressor.bench.engines`): scipy BSR
  (``scipy.sparse.bsr_array``, single-threaded) always, MKL sparse BLAS via ``sparse_dot_mkl``
  where it imports (``pip install -e '.[engines]'``; otherwise one line says why); ``x scipy BSR``
  is each row's speed-up over scipy's;
* ``onnx``: ONNX Runtime on a dense ``nn.Linear`` export vs on our module's export, per
  ``--onnx-layers`` depth: 1 = one layer per model (``--copies`` models rotated, every call on a
  cold session); L > 1 = a stack of L layers, each with its own weights, in one model, timed per
  layer (how a deployed model with several such layers runs: one warm session, every layer's
  weights streamed from memory). Each model's ORT output is checked against torch first;
* ``rnn``: one streaming step of a multi-layer LSTM: ``nn.LSTM`` one-step call, stacked
  ``nn.LSTMCell`` s, :meth:`~compressor.kernels.SparseLSTM.step`;
* ``gated``: dense ``F.linear`` vs :class:`~compressor.kernels.GatedBlockLinear` (gate network
  included) per keep fraction and gating mode, with its default path (the compiled kernel of
  :mod:`compressor.kernels.native` where it builds) and its pure-torch ``ebag`` path;
* ``gated-rnn``: one streaming step of a multi-layer :class:`~compressor.kernels.GatedLSTM`
  (``--rnn-hidden``, ``--rnn-input``, ``--rnn-layers``, ``--gated-block``, ``--keeps``, ``--gate-rank``; every
  weight gated, gates included) vs the same weights' dense step and stacked ``nn.LSTMCell`` s
  (not in the default sections).

With ``--device cuda`` the GPU benchmark runs instead (:mod:`compressor.bench.kernels_gpu`: cuBLAS,
torch's Triton BSR, torch 2:4 semi-structured and our Triton kernels); without CUDA it exits with
status 2 and one line on stderr. The CPU behaviour (``--device cpu``, the default) is unchanged.

Run ``python -m compressor.bench.kernels --help``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.timing import paired_ratio

from .common import cells_step, machine_info, print_table, rnn_cells, time_interleaved, timing_row, write_json
from .kernels_gpu import add_gpu_arguments

__all__ = ["add_arguments", "run", "main"]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _shape(text: str) -> tuple[int, int]:
    out, _, inp = text.lower().partition("x")
    return int(out), int(inp)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``compress bench kernels``."""
    parser.add_argument("--shape", type=_shape, default=(4096, 4096), help="weight OUTxIN for the linear/onnx sections")
    parser.add_argument("--block", type=_ints, default=[32],
                        help="square block size(s) for linear/onnx/rnn, a comma list (e.g. 8,16,32): each section "
                             "runs once per size")
    parser.add_argument("--sparsities", type=_floats, default=[0.9, 0.75, 0.5], help="block sparsities (fraction pruned)")
    parser.add_argument("--batches", type=_ints, default=[1, 16], help="batch sizes for the linear section")
    parser.add_argument("--onnx-batches", type=_ints, default=[1], help="batch sizes for the onnx section")
    parser.add_argument("--onnx-layers", type=_ints, default=[1, 8],
                        help="onnx: layers per exported model; 1 = one layer per model (--copies models rotated), "
                             "L > 1 = L layers with their own weights stacked in one model, timed per layer "
                             "(needs a square --shape)")
    parser.add_argument("--rnn-hidden", type=int, default=1024)
    parser.add_argument("--rnn-input", type=int, default=None, help="gated-rnn: input size of the first layer (default: hidden)")
    parser.add_argument("--rnn-layers", type=int, default=2)
    parser.add_argument("--rnn-sparsity", type=float, default=0.9)
    parser.add_argument("--gated-shape", type=_shape, default=(4096, 1024), help="OUTxIN of the gated layer")
    parser.add_argument("--gated-block", type=int, default=128)
    parser.add_argument("--keeps", type=_floats, default=[0.5, 0.25], help="kept block fractions for the gated sections")
    parser.add_argument("--gate-rank", type=int, default=0, help="gated-rnn: gate bottleneck rank (0: full Linear gate)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per copy before the timed rounds")
    parser.add_argument("--copies", type=int, default=4, help="weight/input copies rotated per row")
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT intra-op threads (default: torch's)")
    parser.add_argument("--ort-pool", choices=("shared", "session"), default="session",
                        help="onnx: all ORT sessions on one global thread pool that spins between calls (shared), "
                             "or a pool per session without spinning (session)")
    parser.add_argument("--sections", default="linear,onnx,rnn,gated", help="comma list of sections to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="output JSON (default bench-results/kernels-<time>.json)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: the sections above; cuda: the GPU benchmark (flags marked [cuda])")
    add_gpu_arguments(parser)


# -- helpers -----------------------------------------------------------------------------------

def _balanced_mask(out: int, inp: int, block: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Random balanced block mask: every block row keeps round((1 - sparsity) * C) blocks."""
    R, C = -(-out // block), -(-inp // block)
    k = max(1, round((1.0 - sparsity) * C))
    scores = torch.rand(R, C, generator=gen)
    grid = torch.zeros(R, C, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out, :inp]


def _linear(out: int, inp: int, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, inp, generator=gen) * inp ** -0.5)
        lin.bias.copy_(torch.randn(out, generator=gen) * 0.1)
    return lin


def _time(fns, args):
    return time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, copies=args.copies)


# -- sections ----------------------------------------------------------------------------------

SCIPY = "scipy BSR (1 thread)"
MKL = "MKL BSR (sparse_dot_mkl)"


def bench_linear(args, gen) -> list[dict]:
    from compressor.kernels import BlockSparseLinear

    from .engines import mkl_bsr_linear, mkl_unavailable_reason, scipy_bsr_linear

    out, inp = args.shape
    n = args.copies
    lins = [_linear(out, inp, gen) for _ in range(n)]
    threads = args.threads or torch.get_num_threads()
    mkl_reason = mkl_unavailable_reason()
    if mkl_reason:
        print(f"{MKL} row not run: {mkl_reason}")
    rows = []
    for block in args.block:
        for sp in args.sparsities:
            masks = [_balanced_mask(out, inp, block, sp, gen) for _ in range(n)]
            ours = [BlockSparseLinear.from_dense(l, m, (block, block)) for l, m in zip(lins, masks)]
            ours_bsr = [BlockSparseLinear.from_dense(l, m, (block, block), layout="bsr") for l, m in zip(lins, masks)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse BSR support is in beta"
                tbsr = [(l.weight.detach() * m).to_sparse_bsr((block, block)) for l, m in zip(lins, masks)]
            # the other engines get the same masked weights, as numpy arrays
            weights = [((l.weight.detach() * m).numpy(), l.bias.detach().numpy()) for l, m in zip(lins, masks)]
            engines = {SCIPY: [scipy_bsr_linear(w, b, block) for w, b in weights]}
            if mkl_reason is None:
                engines[MKL] = [mkl_bsr_linear(w, b, block, threads) for w, b in weights]
            for B in args.batches:
                xs = [torch.randn(B, inp, generator=gen) for _ in range(n)]
                fns = {
                    "dense F.linear": lambda i: F.linear(xs[i % n], lins[i % n].weight, lins[i % n].bias),
                    "torch BSR": lambda i: torch.sparse.mm(tbsr[i % n], xs[i % n].t()).t() + lins[i % n].bias,
                    "ours BlockSparseLinear": lambda i: ours[i % n](xs[i % n]),
                    "ours, BSR layout": lambda i: ours_bsr[i % n](xs[i % n]),
                }
                for name, fs in engines.items():
                    feeds = [prepare(x.numpy()) for (prepare, _), x in zip(fs, xs)]
                    fns[name] = (lambda fs, feeds: (lambda i: fs[i % n][1](feeds[i % n])))(fs, feeds)
                t = _time(fns, args)
                case = f"{out}x{inp} block={block} sp={sp:g} batch={B}"
                d = t["dense F.linear"]["median_s"]
                for name in fns:
                    extra = {"block": block, "sparsity": sp, "batch": B,
                             "speedup_vs_scipy_bsr": t[SCIPY]["median_s"] / t[name]["median_s"]}
                    if name.startswith("ours"):
                        extra["speedup_vs_torch_bsr"] = t["torch BSR"]["median_s"] / t[name]["median_s"]
                        # the 95% band of the paired per-round ratios: is "faster than scipy" beyond noise?
                        band = paired_ratio(t[SCIPY]["samples_s"], t[name]["samples_s"])
                        extra.update(scipy_ratio_low=band["low"], scipy_ratio_high=band["high"])
                    rows.append(timing_row("linear", case, name, t[name], d, extra))
    return rows


def bench_onnx(args, gen) -> list[dict]:
    from compressor.kernels import BlockSparseLinear, export_onnx, ort_session
    from compressor.kernels.onnx_check import use_global_ort_threads

    out, inp = args.shape
    n = args.copies
    threads = args.threads or torch.get_num_threads()
    shared = args.ort_pool == "shared"
    if shared:
        use_global_ort_threads(threads)
    # shared: every session on one spinning pool of `threads` threads, as one deployed model runs.
    # session: a pool per session, without spinning (2n sessions share the cores, and idle
    # sessions' spinning threads would be timed); each call then wakes its pool's threads.
    session = functools.partial(ort_session, threads=threads, spin=False, shared_pool=shared)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as tmp:
        for block, L in ((b, L) for b in args.block for L in args.onnx_layers):
            # At least `copies` distinct weight sets rotate: `copies` one-layer models, or enough
            # L-layer models (each layer its own weights) to hold that many layers.
            n_models = -(-n // L)
            dense_layers = [[_linear(out, inp, gen) for _ in range(L)] for _ in range(n_models)]
            dense_stacks = [_stack(layers) for layers in dense_layers]
            for B in args.onnx_batches:
                ex = torch.randn(B, inp, generator=gen)
                xs = [torch.randn(B, inp, generator=gen) for _ in range(n)]
                dense_s = [_verified_session(session, export_onnx(m, (ex,), os.path.join(tmp, f"dense{block}_{L}_{B}_{i}.onnx")),
                                             m, xs[0]) for i, m in enumerate(dense_stacks)]
                for sp in args.sparsities:
                    ours = [_stack([BlockSparseLinear.from_dense(lin, _balanced_mask(out, inp, block, sp, gen),
                                                                 (block, block)) for lin in layers])
                            for layers in dense_layers]
                    path = os.path.join(tmp, f"ours{block}_{L}_{B}_{sp}_{{}}.onnx")
                    ours_s = [_verified_session(session, export_onnx(m, (ex,), path.format(i)),
                                                m, xs[0]) for i, m in enumerate(ours)]
                    feeds = [x.numpy() for x in xs]
                    name_d, name_o = dense_s[0].get_inputs()[0].name, ours_s[0].get_inputs()[0].name
                    fns = {
                        "ORT dense": lambda i: dense_s[i % n_models].run(None, {name_d: feeds[i % n]}),
                        "ORT ours": lambda i: ours_s[i % n_models].run(None, {name_o: feeds[i % n]}),
                    }
                    t = {name: _per_layer(v, L) for name, v in _time(fns, args).items()}
                    case = f"{out}x{inp} block={block} sp={sp:g} batch={B}" + (f", {L}-layer model, per layer" if L > 1 else "")
                    for name in fns:
                        rows.append(timing_row("onnx", case, name, t[name], t["ORT dense"]["median_s"],
                                         {"block": block, "sparsity": sp, "batch": B, "layers": L}))
    return rows


def _stack(layers: list[nn.Module]) -> nn.Module:
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _per_layer(t: dict, layers: int) -> dict:
    return {**t, "median_s": t["median_s"] / layers, "min_s": t["min_s"] / layers}


def _verified_session(make_session, path: str, module: nn.Module, x: torch.Tensor, rtol: float = 1e-4):
    """An ORT session on ``path`` whose output on ``x`` matches ``module(x)`` (max error relative to
    the largest output); a benchmark of a wrong graph would time the wrong thing."""
    from compressor.kernels.onnx_check import ort_errors

    sess = make_session(path)
    with torch.no_grad():
        expected = module(x)
    _, err = ort_errors(sess, [(x,)], [[expected]])
    if not err <= rtol:
        raise RuntimeError(f"bench onnx: ORT output of {os.path.basename(path)} differs from torch "
                           f"(max error {err:.2e} of the largest output, allowed {rtol:g})")
    return sess


def bench_rnn(args, gen) -> list[dict]:
    return [row for block in args.block for row in _bench_rnn(args, gen, block)]


def _bench_rnn(args, gen, block: int) -> list[dict]:
    from compressor.kernels import SparseLSTM

    H, L, n = args.rnn_hidden, args.rnn_layers, args.copies
    lstms, cells, sparse = [], [], []
    for _ in range(n):
        lstm = _random_lstm(H, H, L, gen)
        masks = {name: _balanced_mask(*getattr(lstm, name).shape, block, args.rnn_sparsity, gen)
                 for name in lstm._flat_weights_names if name.startswith("weight_")}
        lstms.append(lstm)
        cells.append(rnn_cells(lstm))
        sparse.append(SparseLSTM.from_dense(lstm, masks, block=(block, block)))
    xs = [torch.randn(1, H, generator=gen) for _ in range(n)]
    hs = [torch.randn(L, 1, H, generator=gen) for _ in range(n)]
    cs = [torch.randn(L, 1, H, generator=gen) for _ in range(n)]

    fns = {
        "nn.LSTMCell x layers": lambda i: cells_step(cells[i % n], xs[i % n], (hs[i % n], cs[i % n])),
        "nn.LSTM one-step call": lambda i: lstms[i % n](xs[i % n].unsqueeze(0), (hs[i % n], cs[i % n])),
        "ours SparseLSTM.step": lambda i: sparse[i % n].step(xs[i % n], (hs[i % n], cs[i % n])),
    }
    t = _time(fns, args)
    case = f"LSTM {L}x{H} block={block} sp={args.rnn_sparsity:g} batch=1 step"
    return [timing_row("rnn", case, name, t[name], t["nn.LSTMCell x layers"]["median_s"],
                       {"block": block, "sparsity": args.rnn_sparsity}) for name in fns]


def bench_gated(args, gen) -> list[dict]:
    from compressor.kernels import GatedBlockLinear

    out, inp = args.gated_shape
    n = args.copies
    lins = [_linear(out, inp, gen) for _ in range(n)]
    xs = [torch.randn(1, inp, generator=gen) for _ in range(n)]
    rows = []
    for keep in args.keeps:
        fns = {"dense F.linear": lambda i: F.linear(xs[i % n], lins[i % n].weight, lins[i % n].bias)}
        for mode in ("global", "row"):
            mods = [GatedBlockLinear.from_dense(l, (args.gated_block, args.gated_block), keep, mode, seed=i) for i, l in enumerate(lins)]
            fns[f"ours gated ({mode} top-k, with gate)"] = (lambda ms: (lambda i: ms[i % n](xs[i % n])))(mods)
            # the pure-torch path beside the default (the compiled kernel where it builds)
            fns[f"ours gated, torch ebag path ({mode})"] = (lambda ms: (lambda i: ms[i % n](xs[i % n], path="ebag")))(mods)
        t = _time(fns, args)
        case = f"{out}x{inp} block={args.gated_block} keep={keep:g} batch=1"
        for name in fns:
            rows.append(timing_row("gated", case, name, t[name], t["dense F.linear"]["median_s"], {"keep": keep}))
    return rows


def bench_gated_rnn(args, gen) -> list[dict]:
    """Streaming step of a gated LSTM (every weight gated, gates included) vs the dense step."""
    from compressor.kernels import GatedLSTM, SparseLSTM

    H, L, n, b = args.rnn_hidden, args.rnn_layers, args.copies, args.gated_block
    I = args.rnn_input or H
    lstms = [_random_lstm(I, H, L, gen) for _ in range(n)]
    dense = [SparseLSTM.from_dense(lstm, {}) for lstm in lstms]  # plain nn.Linear projections
    cells = [rnn_cells(lstm) for lstm in lstms]
    xs = [torch.randn(1, I, generator=gen) for _ in range(n)]
    states = [(torch.randn(L, 1, H, generator=gen), torch.randn(L, 1, H, generator=gen)) for _ in range(n)]
    rows = []
    for keep in args.keeps:
        fns = {
            "nn.LSTMCell x layers": lambda i: cells_step(cells[i % n], xs[i % n], states[i % n]),
            "dense step (SparseLSTM, nn.Linear)": lambda i: dense[i % n].step(xs[i % n], states[i % n]),
        }
        for mode in ("global", "row"):
            gated = [GatedLSTM.from_dense(lstm, None, (b, b), keep, mode, rank=args.gate_rank, seed=i).eval()
                     for i, lstm in enumerate(lstms)]
            fns[f"ours GatedLSTM.step ({mode} top-k, with gates)"] = (
                lambda gs: (lambda i: gs[i % n].step(xs[i % n], states[i % n])))(gated)
        t = _time(fns, args)
        case = f"gated LSTM {L}x{H} (input {I}) block={b} keep={keep:g} rank={args.gate_rank} batch=1 step"
        base = t["dense step (SparseLSTM, nn.Linear)"]["median_s"]
        rows += [timing_row("gated-rnn", case, name, t[name], base, {"keep": keep}) for name in fns]
    return rows


def _random_lstm(input_size: int, hidden: int, layers: int, gen) -> nn.LSTM:
    """An ``nn.LSTM`` with seeded N(0, 1/hidden) weights."""
    lstm = nn.LSTM(input_size, hidden, num_layers=layers)
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * hidden ** -0.5)
    return lstm


SECTIONS = {"linear": bench_linear, "onnx": bench_onnx, "rnn": bench_rnn, "gated": bench_gated,
            "gated-rnn": bench_gated_rnn}


def run(args: argparse.Namespace) -> int:
    """Run the selected sections, print one table per section, write JSON; returns 0."""
    if getattr(args, "device", "cpu") == "cuda":
        return _run_cuda(args)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {sorted(SECTIONS)}", file=sys.stderr)
        return 2
    if "onnx" in sections and any(L > 1 for L in args.onnx_layers) and args.shape[0] != args.shape[1]:
        print(f"--onnx-layers {','.join(map(str, args.onnx_layers))} stacks layers, which needs a square --shape "
              f"(got {args.shape[0]}x{args.shape[1]}); pass --onnx-layers 1", file=sys.stderr)
        return 2
    if any(L < 1 for L in args.onnx_layers):
        print(f"--onnx-layers must be positive (got {args.onnx_layers})", file=sys.stderr)
        return 2
    if not args.block or any(b < 1 for b in args.block):
        print(f"--block must be positive block sizes (got {args.block})", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    info = machine_info()
    info["load_average_start"] = os.getloadavg()
    if "linear" in sections:
        from .engines import mkl_unavailable_reason

        reason = mkl_unavailable_reason()
        info["mkl_row"] = f"not run: {reason}" if reason else "ran"
    rows: list[dict] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in sections:
            if s == "onnx":
                with torch.inference_mode(False):
                    new = SECTIONS[s](args, gen)
            else:
                new = SECTIONS[s](args, gen)
            rows.extend(new)
            _print(s, new)
    info["load_average_end"] = os.getloadavg()
    info["elapsed_s"] = time.perf_counter() - t0
    path = args.json or os.path.join("bench-results", f"kernels-{time.strftime('%Y%m%d-%H%M%S')}.json")
    payload = {"benchmark": "kernels", "command": " ".join(sys.argv), "machine": info, "args": _jsonable(vars(args)),
               "rows": rows}
    print(f"wrote {write_json(path, payload)}  ({info['elapsed_s']:.0f} s; load average {info['load_average_end'][0]:.2f})")
    return 0


def _run_cuda(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("compress bench kernels --device cuda: no CUDA device is available here (torch.cuda.is_available() "
              "is False); run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    from compressor.kernels.triton_common import triton_importable

    if not triton_importable():
        print("compress bench kernels --device cuda: the 'triton' package is not installed (pip install -e '.[gpu]')",
              file=sys.stderr)
        return 2
    from .kernels_gpu import run_gpu

    return run_gpu(args)


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k != "func"}


def _print(section: str, rows: list[dict]) -> None:
    cols = ["case", "impl", "median us", "min us", "x dense"]
    if section == "linear":
        cols += ["x torch BSR", "x scipy BSR"]
    table = []
    for r in rows:
        line = [r["case"], r["impl"], r["median_us"], r["min_us"], r.get("speedup_vs_dense", float("nan"))]
        if section == "linear":
            line += [r.get("speedup_vs_torch_bsr", ""), r.get("speedup_vs_scipy_bsr", "")]
        table.append(line)
    print_table(f"kernels: {section}", cols, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compress bench kernels", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
