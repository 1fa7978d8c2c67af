"""Triton block-sparse GEMM/GEMV under the Triton interpreter (CPU, small odd shapes).

Every case is checked against the pure-torch reference of the op and against independent dense
math, ``F.linear(x, w * mask, b)``. The interpreter is switched on per test with
``monkeypatch.setenv("TRITON_INTERPRET", "1")``: kernels are built in the mode the environment
says at launch time (:class:`compressor.kernels.triton_common.LazyKernel`), so nothing leaks into
other tests.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("triton")

from compressor.kernels import BSR, BalancedBlock, BlockSparseLinear  # noqa: E402
from compressor.kernels.triton_block import (  # noqa: E402
    block_sparse_linear_triton,
    block_sparse_mm,
    block_sparse_mm_reference,
)
from compressor.kernels.triton_common import TritonUnavailableError  # noqa: E402

#: relative Frobenius error allowed against fp32 dense math, per dtype
REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().double() - ref.detach().double()).norm() / ref.detach().double().norm().clamp_min(1e-30))


def _case(out, inp, block, keep, balanced, dtype, seed, block_mask):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen).to(dtype)
    b = torch.randn(out, generator=gen).to(dtype)
    mask = block_mask(out, inp, block, keep, balanced=balanced, seed=seed)
    return w, b, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("out,inp,block", [(45, 70, (16, 16)), (40, 33, (32, 16)), (70, 50, (16, 32))])
def test_balanced_and_bsr_match_dense(interpret, block_mask, dtype, out, inp, block):
    w, b, mask = _case(out, inp, block, 0.5, True, dtype, out + inp, block_mask)
    bal = BalancedBlock.from_dense(w, mask, block)
    bsr = BSR.from_dense(w, mask, block)
    for B in (1, 5, 19):  # GEMV path (split-K) and GEMM path; 19 is not a multiple of any tile
        x = torch.randn(B, inp).to(dtype)
        dense = F.linear(x.float(), w.float() * mask, b.float())
        y1 = block_sparse_linear_triton(x, bal.values_t(), bal.col_idx, None, b, inp, out)
        y2 = block_sparse_linear_triton(x, bsr.values.transpose(1, 2).contiguous(), bsr.col_indices,
                                        bsr.crow_indices, b, inp, out)
        assert y1.dtype == dtype and y1.shape == (B, out) and torch.isfinite(y1).all()
        assert rel_err(y1, dense) < REL[dtype], (B, rel_err(y1, dense))
        assert rel_err(y2, dense) < REL[dtype], (B, rel_err(y2, dense))


@pytest.mark.parametrize("split", [1, 2, 3])
def test_op_matches_reference_with_unbalanced_rows_and_empty_row(interpret, block_mask, split):
    out, inp, block = 75, 61, (16, 16)
    w, _, mask = _case(out, inp, block, 0.4, False, torch.float32, 7, block_mask)
    mask[16:32] = False  # block row 1 keeps nothing
    bsr = BSR.from_dense(w, mask, block)
    vt = bsr.values.transpose(1, 2).contiguous()  # (nnzb, bw, bh)
    x = torch.randn(3, 64)  # already padded to the block grid
    y = block_sparse_mm(x, vt, bsr.col_indices, bsr.crow_indices, split)
    ref = block_sparse_mm_reference(x, vt, bsr.col_indices, bsr.crow_indices)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    dense = F.linear(x[:, :inp], w * mask)
    torch.testing.assert_close(y[:, :out], dense, rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:, 16:32], torch.zeros(3, 16))


def test_backward_is_reference_autograd(interpret, block_mask):
    out, inp, block = 45, 40, (16, 16)
    w, b, mask = _case(out, inp, block, 0.5, True, torch.float32, 3, block_mask)
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    mod = BlockSparseLinear.from_dense(lin, mask, block)
    mod.backend = "triton"
    x = torch.randn(2, 3, inp, requires_grad=True)
    y = mod(x)
    assert y.shape == (2, 3, out)
    gy = torch.randn_like(y)
    y.backward(gy)
    xd = x.detach().clone().requires_grad_(True)
    wd = (w * mask).clone().requires_grad_(True)
    F.linear(xd, wd, b).backward(gy)
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mod.to_dense_weight() * 0 + _grad_dense(mod), wd.grad * mask, rtol=1e-5, atol=1e-5)


def _grad_dense(mod: BlockSparseLinear) -> torch.Tensor:
    """The module's values.grad laid out as a dense (out, in) matrix."""
    saved = mod.values.data.clone()
    mod.values.data.copy_(mod.values.grad)
    try:
        return mod.to_dense_weight()
    finally:
        mod.values.data.copy_(saved)


def test_module_backends_agree_and_auto_stays_on_torch_on_cpu(interpret, block_mask, monkeypatch):
    out, inp, block = 50, 45, (16, 16)
    w, b, mask = _case(out, inp, block, 0.5, True, torch.float32, 5, block_mask)
    lin = nn.Linear(inp, out)
    with torch.no_grad():
        lin.weight.copy_(w)
    for layout in ("balanced", "bsr"):
        mod = BlockSparseLinear.from_dense(lin, mask, block, layout=layout)
        x = torch.randn(7, inp)
        y_torch = mod(x)
        mod.backend = "triton"
        torch.testing.assert_close(mod(x), y_torch, rtol=1e-5, atol=1e-5)
    import compressor.kernels.triton_block as tb

    monkeypatch.setattr(tb, "block_sparse_linear_triton", lambda *a, **k: pytest.fail("auto used triton on CPU"))
    mod.backend = "auto"
    torch.testing.assert_close(mod(x), y_torch, rtol=1e-5, atol=1e-5)


def test_triton_backend_errors(block_mask, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    lin = nn.Linear(40, 40)
    mod = BlockSparseLinear.from_dense(lin, block_mask(40, 40, 16, 0.5), (16, 16))
    mod.backend = "triton"
    with pytest.raises(TritonUnavailableError, match="TRITON_INTERPRET=1"):
        mod(torch.randn(2, 40))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    small = BlockSparseLinear.from_dense(lin, block_mask(40, 40, 8, 0.5), (8, 8))
    small.backend = "triton"
    with pytest.raises(ValueError, match="powers of two >= 16"):
        small(torch.randn(2, 40))
    small.backend = "auto"  # falls back to torch
    assert small(torch.randn(2, 40)).shape == (2, 40)
    mod.backend = "cuda"
    with pytest.raises(ValueError, match="backend must be one of"):
        mod(torch.randn(2, 40))


def test_custom_op_is_one_node_in_export(interpret, block_mask):
    lin = nn.Linear(40, 33)
    mod = BlockSparseLinear.from_dense(lin, block_mask(33, 40, 16, 0.5), (16, 16)).eval()
    mod.backend = "triton"
    x = torch.randn(3, 40)
    ep = torch.export.export(mod, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert sum("compressor.block_sparse_mm" in t for t in targets) == 1, targets
    torch.testing.assert_close(ep.module()(x), mod(x), rtol=1e-5, atol=1e-5)
