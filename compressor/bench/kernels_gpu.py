"""``compress bench kernels --device cuda``: our Triton kernels vs cuBLAS and torch's sparse kernels on one GPU.

Rows, side by side per case (bf16 by default, weight ``--shape``):

* ``gemm`` (``--tokens`` rows of ``x``, ``--gpu-block`` blocks, each ``--sparsities``): cuBLAS dense
  ``F.linear``; torch's Triton BSR ``torch.sparse._triton_ops.bsr_dense_mm``; ours
  (``compressor::block_sparse_mm``). Ratios vs dense and vs ``bsr_dense_mm``.
* ``gemv`` (``--gemv-batches``): the same three, plus the fraction of the memory roofline: bytes
  moved (stored blocks + indices + ``x`` + ``y``) / time, over a measured device-to-device copy
  bandwidth (bytes read + written).
* ``gated`` (batch 1, ``--keeps``): dense ``F.linear`` vs :class:`~compressor.kernels.GatedBlockLinear`
  on the Triton backend, gate network included.
* ``nm``: dense vs torch 2:4 semi-structured (``to_sparse_semi_structured``) at ``--tokens`` and
  each GEMV batch.
* ``nm-train``: one training step's products at ``--tokens`` (forward, then backward to ``x`` and
  the weight): dense ``nn.Linear`` vs :class:`~compressor.kernels.NMLinear` with a transposable 2:4
  mask (greedy solver) on the semi-structured kernels (``W`` forward, ``W^T`` for ``grad_x``;
  the compressed copies are rebuilt per step, as after every optimizer update).

Timing: ``triton.testing.do_bench`` (CUDA events, median, its own L2 flush between runs) over
callables that rotate among ``--copies`` weight/input sets so no row runs from a warm cache. A
row that cannot run (an unsupported shape in torch's kernels, say) is reported with its error.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F

from ..errors import first_line
from .common import machine_info, print_table, write_json

__all__ = ["add_gpu_arguments", "run_gpu"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def add_gpu_arguments(parser) -> None:
    """Flags used only with ``--device cuda``."""
    parser.add_argument("--tokens", type=int, default=4096, help="[cuda] rows of x for the GEMM section")
    parser.add_argument("--gemv-batches", type=_ints, default=[1, 16], help="[cuda] batch sizes for the GEMV section")
    parser.add_argument("--gpu-block", type=int, default=64, help="[cuda] square block size")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16", help="[cuda] dtype")
    parser.add_argument("--gpu-sections", default="gemm,gemv,gated,nm,nm-train", help="[cuda] comma list of sections")


def _bench(fn, args) -> float:
    """Median milliseconds of ``fn()`` (CUDA events, L2 flushed between runs by do_bench)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=max(50, args.repeats * 5), return_mode="median"))


def _rotating(fn_i, n):
    state = {"i": 0}

    def call():
        state["i"] += 1
        return fn_i(state["i"] % n)

    return call


def _copy_bandwidth(args) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers."""
    src = torch.empty(1 << 29, dtype=torch.int16, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), args)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def _mask(out, inp, block, sparsity, gen, device):
    R, C = -(-out // block), -(-inp // block)
    k = max(1, round((1.0 - sparsity) * C))
    grid = torch.zeros(R, C, dtype=torch.bool).scatter_(1, torch.rand(R, C, generator=gen).topk(k, dim=1).indices, True)
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out, :inp].to(device)


def _try(rows, section, case, name, fn, args, extra=None):
    try:
        fn()
        torch.cuda.synchronize()
        ms = _bench(fn, args)
        rows.append({"section": section, "case": case, "impl": name, "median_us": ms * 1e3, **(extra or {})})
    except Exception as exc:  # a competitor that cannot run this case is reported, not fatal
        rows.append({"section": section, "case": case, "impl": name, "median_us": float("nan"),
                     "error": first_line(exc, 120)})


def _ratios(rows, case, bsr_name="torch bsr_dense_mm"):
    mine = [r for r in rows if r["case"] == case]
    dense = next((r["median_us"] for r in mine if r["impl"].startswith("dense")), float("nan"))
    bsr = next((r["median_us"] for r in mine if r["impl"] == bsr_name), float("nan"))
    for r in mine:
        r["speedup_vs_dense"] = dense / r["median_us"]
        if r["impl"].startswith("ours"):
            r["speedup_vs_torch_bsr"] = bsr / r["median_us"]


def bench_block(args, gen, batches, section, bandwidth) -> list[dict]:
    from torch.sparse._triton_ops import bsr_dense_mm

    from compressor.kernels import BalancedBlock
    from compressor.kernels.triton_block import block_sparse_linear_triton

    dtype, dev, n, bs = _DTYPES[args.dtype], "cuda", args.copies, args.gpu_block
    out, inp = args.shape
    ws = [torch.randn(out, inp, generator=gen).mul(inp ** -0.5).to(dev, dtype) for _ in range(n)]
    rows: list[dict] = []
    for sp in args.sparsities:
        masks = [_mask(out, inp, bs, sp, gen, dev) for _ in range(n)]
        fmts = [BalancedBlock.from_dense(w, m, (bs, bs)) for w, m in zip(ws, masks)]
        vts = [f.values_t() for f in fmts]
        bsrs = [(w * m).to_sparse_bsr((bs, bs)) for w, m in zip(ws, masks)]
        for B in batches:
            xs = [torch.randn(B, inp, generator=gen).to(dev, dtype) for _ in range(n)]
            xts = [x.t().contiguous() for x in xs]
            case = f"{out}x{inp} {args.dtype} block={bs} sp={sp:g} B={B}"
            ours = _rotating(lambda i: block_sparse_linear_triton(xs[i], vts[i], fmts[i].col_idx, None, None, inp, out), n)
            _try(rows, section, case, "dense F.linear (cuBLAS)", _rotating(lambda i: F.linear(xs[i], ws[i]), n), args)
            _try(rows, section, case, "torch bsr_dense_mm", _rotating(lambda i: bsr_dense_mm(bsrs[i], xts[i]), n), args)
            stored = vts[0].numel() * vts[0].element_size() + fmts[0].col_idx.numel() * 8
            moved = stored + (B * inp + B * out) * xs[0].element_size()
            _try(rows, section, case, "ours block_sparse_mm", ours, args, {"bytes_moved": moved})
            _ratios(rows, case)
            for r in rows:
                if r["case"] == case and "bytes_moved" in r and section == "gemv":
                    r["roofline_fraction"] = r["bytes_moved"] / (r["median_us"] * 1e-6) / bandwidth
    return rows


def bench_gated(args, gen) -> list[dict]:
    from compressor.kernels import GatedBlockLinear

    dtype, dev, n, bs = _DTYPES[args.dtype], "cuda", args.copies, args.gpu_block
    out, inp = args.shape
    lins = [torch.nn.Linear(inp, out, dtype=dtype, device=dev) for _ in range(n)]
    xs = [torch.randn(1, inp, generator=gen).to(dev, dtype) for _ in range(n)]
    rows: list[dict] = []
    for keep in args.keeps:
        case = f"{out}x{inp} {args.dtype} block={bs} keep={keep:g} B=1"
        _try(rows, "gated", case, "dense F.linear (cuBLAS)",
             _rotating(lambda i: F.linear(xs[i], lins[i].weight, lins[i].bias), n), args)
        for mode in ("global", "row"):
            mods = [GatedBlockLinear.from_dense(l, (bs, bs), keep, mode, seed=i).eval() for i, l in enumerate(lins)]
            for m in mods:
                m.backend = "triton"
            _try(rows, "gated", case, f"ours gated {mode} (with gate)", _rotating(lambda i, ms=mods: ms[i](xs[i]), n), args)
        _ratios(rows, case)
    return rows


def bench_nm(args, gen) -> list[dict]:
    from compressor.kernels.semi_structured import SemiStructuredWeight

    dtype, dev, n = _DTYPES[args.dtype], "cuda", args.copies
    out, inp = args.shape
    ws = []
    for _ in range(n):
        w = torch.randn(out, inp, generator=gen).to(dev, dtype)
        keep = w.abs().view(out, -1, 4).topk(2, dim=2).indices
        mask = torch.zeros(out, inp // 4, 4, dtype=torch.bool, device=dev).scatter_(2, keep, True).view(out, inp)
        ws.append(w * mask)
    semis = [SemiStructuredWeight() for _ in range(n)]
    rows: list[dict] = []
    for B in [args.tokens, *args.gemv_batches]:
        xs = [torch.randn(B, inp, generator=gen).to(dev, dtype) for _ in range(n)]
        case = f"{out}x{inp} {args.dtype} 2:4 B={B}"
        _try(rows, "nm", case, "dense F.linear (cuBLAS)", _rotating(lambda i: F.linear(xs[i], ws[i]), n), args)
        _try(rows, "nm", case, "torch semi-structured 2:4",
             _rotating(lambda i: semis[i].linear(xs[i], ws[i], lambda: ws[i], None, inp, out), n), args)
        _ratios(rows, case)
    return rows


def bench_nm_train(args, gen) -> list[dict]:
    from compressor.kernels import NMLinear
    from compressor.solvers import transposable_nm_mask

    dtype, dev, n = _DTYPES[args.dtype], "cuda", args.copies
    out, inp = args.shape
    case = f"{out}x{inp} {args.dtype} transposable 2:4 fwd+bwd B={args.tokens}"
    rows: list[dict] = []
    with torch.inference_mode(False):  # the section runs inside run_gpu's inference mode
        dense, sparse, xs, gs = [], [], [], []
        for _ in range(n):
            w = torch.randn(out, inp, generator=gen)
            mask = transposable_nm_mask(w, 2, 4, method="greedy")
            lin = torch.nn.Linear(inp, out).to(dev, dtype)
            with torch.no_grad():
                lin.weight.copy_(w * mask)
            dense.append(lin)
            sparse.append(NMLinear.from_dense(lin, mask.to(dev), 2, 4))
            xs.append(torch.randn(args.tokens, inp, generator=gen).to(dev, dtype).requires_grad_(True))
            gs.append(torch.randn(args.tokens, out, generator=gen).to(dev, dtype))
        reason = sparse[0].semi_structured_reason(xs[0])
        if reason is not None:
            return [{"section": "nm-train", "case": case, "impl": "ours NMLinear semi-structured",
                     "median_us": float("nan"), "error": reason}]

        def step(mods, i):
            mods[i](xs[i]).backward(gs[i])
            mods[i].zero_grad(set_to_none=True)
            xs[i].grad = None

        def sparse_step(i):
            with torch.no_grad():  # an in-place update, as an optimizer step: both compressed copies rebuild
                sparse[i].values.mul_(1.0)
            step(sparse, i)

        _try(rows, "nm-train", case, "dense nn.Linear fwd+bwd", _rotating(lambda i: step(dense, i), n), args)
        _try(rows, "nm-train", case, "ours NMLinear semi-structured fwd+bwd (recompress)", _rotating(sparse_step, n), args)
        _try(rows, "nm-train", case, "ours NMLinear semi-structured fwd+bwd (cached)",
             _rotating(lambda i: step(sparse, i), n), args)
    _ratios(rows, case)
    return rows


def run_gpu(args) -> int:
    """Run the GPU sections (caller has checked that CUDA is available); print tables, write JSON."""
    sections = [s.strip() for s in args.gpu_sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ("gemm", "gemv", "gated", "nm", "nm-train")]
    if unknown:
        print(f"unknown GPU section(s) {unknown}; choose from gemm, gemv, gated, nm, nm-train", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(args.seed)
    info = machine_info()
    info["gpu"] = torch.cuda.get_device_name()
    info["cuda"] = torch.version.cuda
    import triton

    info["triton"] = triton.__version__
    t0 = time.perf_counter()
    bandwidth = _copy_bandwidth(args)
    info["copy_bandwidth_GBps"] = bandwidth / 1e9
    print(f"{info['gpu']}: measured device copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")
    rows: list[dict] = []
    with torch.inference_mode():
        for s in sections:
            if s == "gemm":
                new = bench_block(args, gen, [args.tokens], "gemm", bandwidth)
            elif s == "gemv":
                new = bench_block(args, gen, args.gemv_batches, "gemv", bandwidth)
            elif s == "gated":
                new = bench_gated(args, gen)
            elif s == "nm-train":
                new = bench_nm_train(args, gen)
            else:
                new = bench_nm(args, gen)
            rows.extend(new)
            _print(s, new)
    info["elapsed_s"] = time.perf_counter() - t0
    path = args.json or os.path.join("bench-results", f"kernels-cuda-{time.strftime('%Y%m%d-%H%M%S')}.json")
    payload = {"benchmark": "kernels", "device": "cuda", "command": " ".join(sys.argv), "machine": info,
               "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "func"},
               "rows": rows}
    print(f"wrote {write_json(path, payload)}  ({info['elapsed_s']:.0f} s)")
    return 0


def _print(section: str, rows: list[dict]) -> None:
    cols = ["case", "impl", "median us", "x dense", "x bsr_dense_mm", "roofline", "error"]
    table = [[r["case"], r["impl"], r["median_us"], r.get("speedup_vs_dense", float("nan")),
              r.get("speedup_vs_torch_bsr", ""), r.get("roofline_fraction", ""), r.get("error", "")] for r in rows]
    print_table(f"kernels (cuda): {section}", cols, table)
