"""GPU tests of the Triton kernels and the 2:4 path at realistic shapes (skipped cleanly without CUDA).

Run on a CUDA machine: ``python -m pytest -q tests/gpu``. Each case is checked against dense math in
fp32 (``F.linear(x, w * mask, b)``) with per-dtype relative tolerances; no timing is asserted.
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="GPU tests run compiled kernels"),
]

REL = {torch.float32: 5e-3, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}  # fp32 may use tf32 where torch allows it


def rel_err(y, ref) -> float:
    return float((y.detach().double() - ref.detach().double()).norm() / ref.detach().double().norm())


def _mask(out, inp, block, keep, seed):
    gen = torch.Generator().manual_seed(seed)
    R, C = -(-out // block), -(-inp // block)
    k = max(1, round(keep * C))
    grid = torch.zeros(R, C, dtype=torch.bool).scatter_(1, torch.rand(R, C, generator=gen).topk(k, dim=1).indices, True)
    return grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:out, :inp].cuda()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("layout", ["balanced", "bsr"])
def test_block_sparse_linear_cuda(dtype, block, layout):
    from compressor.kernels import BlockSparseLinear

    out, inp = 1000, 2050  # not multiples of the block
    lin = nn.Linear(inp, out, device="cuda", dtype=dtype)
    mask = _mask(out, inp, block, 0.25, block)
    mod = BlockSparseLinear.from_dense(lin, mask, (block, block), layout=layout)
    assert mod.backend == "auto"
    for B in (1, 7, 16, 333):
        x = torch.randn(B, inp, device="cuda", dtype=dtype)
        ref = F.linear(x.float(), lin.weight.float() * mask, lin.bias.float())
        with torch.no_grad():
            y = mod(x)  # auto -> triton on CUDA
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel_err(y, ref) < REL[dtype], (B, rel_err(y, ref))


def test_block_sparse_training_step_cuda():
    from compressor.kernels import BlockSparseLinear

    lin = nn.Linear(512, 256, device="cuda")
    mask = _mask(256, 512, 32, 0.5, 1)
    mod = BlockSparseLinear.from_dense(lin, mask, (32, 32))
    x = torch.randn(64, 512, device="cuda", requires_grad=True)
    mod(x).square().sum().backward()
    xd = x.detach().clone().requires_grad_(True)
    F.linear(xd, lin.weight.detach() * mask, lin.bias.detach()).square().sum().backward()
    assert rel_err(x.grad, xd.grad) < 5e-3


@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gated_cuda(mode, dtype):
    from compressor.kernels import GatedBlockLinear

    lin = nn.Linear(1024, 4096, device="cuda", dtype=dtype)
    mod = GatedBlockLinear.from_dense(lin, (64, 64), 0.5, mode).cuda()
    x = torch.randn(3, 1024, device="cuda", dtype=dtype)
    with torch.no_grad():
        mod.backend = "triton"
        y = mod(x)
        mod.backend = "torch"
        ref = mod(x, path="bmm")
    assert rel_err(y, ref) < REL[dtype]


def test_nm_linear_semi_structured_cuda():
    from compressor.kernels import NMLinear

    lin = nn.Linear(1024, 4000, device="cuda", dtype=torch.float16)  # 4000 rows: padded inside
    w = lin.weight.detach()
    keep = w.abs().view(4000, -1, 4).topk(2, dim=2).indices
    mask = torch.zeros(4000, 256, 4, dtype=torch.bool, device="cuda").scatter_(2, keep, True).view(4000, 1024)
    mod = NMLinear.from_dense(lin, mask, 2, 4)
    x = torch.randn(64, 1024, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        reason = mod.semi_structured_reason(x)
        if reason is not None:
            pytest.skip(f"2:4 path unavailable: {reason}")
        y = mod(x)
    ref = F.linear(x.float(), w.float() * mask, lin.bias.float())
    assert rel_err(y, ref) < REL[torch.float16]


def test_bench_kernels_cuda_tiny(tmp_path):
    from compressor.bench import kernels as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "k.json"
    args = parser.parse_args(["--device", "cuda", "--shape", "512x512", "--tokens", "256", "--gemv-batches", "1",
                              "--sparsities", "0.5", "--keeps", "0.5", "--repeats", "2", "--copies", "2",
                              "--json", str(out)])
    assert bench.run(args) == 0 and out.exists()


def test_nm_linear_transposable_2to4_trains_on_semi_structured_cuda():
    """Forward and backward of a transposable 2:4 NMLinear on the semi-structured kernels, against
    the pure-torch op in fp32 (same weights, same upstream gradient)."""
    from compressor.kernels import NMLinear

    torch.manual_seed(0)
    tile = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    out, inp = 1000, 1024  # 1000 rows: padded inside
    lin = nn.Linear(inp, out, device="cuda", dtype=torch.float16)
    mask = tile.repeat(out // 4, inp // 4).cuda()
    mod = NMLinear.from_dense(lin, mask, 2, 4)
    ref = NMLinear.from_dense(lin.float(), mask, 2, 4)
    ref.backend = "torch"
    x = torch.randn(256, inp, device="cuda", dtype=torch.float16, requires_grad=True)
    xr = x.detach().float().requires_grad_(True)
    reason = mod.semi_structured_reason(x)
    if reason is not None:
        pytest.skip(f"2:4 path unavailable: {reason}")
    y, yr = mod(x), ref(xr)
    g = torch.randn_like(yr)
    y.backward(g.half())
    yr.backward(g)
    assert rel_err(y, yr) < REL[torch.float16]
    assert rel_err(x.grad, xr.grad) < REL[torch.float16]
    assert rel_err(mod.values.grad, ref.values.grad) < REL[torch.float16]
