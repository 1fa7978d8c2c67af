"""Triton gated block GEMV under the Triton interpreter, against its torch reference and dense math.

The dense reference builds, per example, the weight with only that example's kept blocks, each
scaled by its gate value, and applies ``F.linear``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("triton")

from compressor.kernels import GatedBlockLinear, gated_block_linear  # noqa: E402
from compressor.kernels.triton_gated import gated_block_gemv, gated_block_gemv_reference  # noqa: E402

REL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def rel_err(y, ref) -> float:
    return float((y.detach().double() - ref.detach().double()).norm() / ref.detach().double().norm().clamp_min(1e-30))


def dense_gated(mod: GatedBlockLinear, x: torch.Tensor, idx: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Independent reference: per example, F.linear with the kept blocks scaled by their gates (fp64)."""
    (Ro, Ci), (bh, bw) = mod.grid, mod.block
    w = mod.to_dense_weight().double()
    ys = []
    for b in range(x.shape[0]):
        scale = torch.zeros(Ro * Ci, dtype=torch.float64).index_put_((idx[b],), g[b].double(), accumulate=True)
        full = scale.view(Ro, Ci).repeat_interleave(bh, 0).repeat_interleave(bw, 1)[: mod.out_features, : mod.in_features]
        bias = None if mod.bias is None else mod.bias.double()
        ys.append(F.linear(x[b].double(), w * full, bias))
    return torch.stack(ys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("out,inp,block", [(70, 50, (16, 16)), (33, 45, (16, 32))])
def test_gated_matches_reference_and_dense(interpret, dtype, mode, out, inp, block):
    torch.manual_seed(out + inp)
    lin = nn.Linear(inp, out).to(dtype)
    mod = GatedBlockLinear.from_dense(lin, block, 0.5, mode, seed=1)
    x = torch.randn(3, inp).to(dtype)
    idx, g = mod.select(x)
    xp = F.pad(x, (0, mod.grid[1] * block[1] - inp))
    y_op = gated_block_gemv(xp, mod.blocks, idx, g, *mod.grid, mode == "row")
    y_ref = gated_block_gemv_reference(xp, mod.blocks, idx, g, *mod.grid)
    assert rel_err(y_op, y_ref) < REL[dtype]
    mod.backend = "triton"
    y = mod(x)
    assert y.dtype == dtype and y.shape == (3, out)
    assert rel_err(y, dense_gated(mod, x, idx, g)) < REL[dtype]
    mod.backend = "torch"
    assert rel_err(y, mod(x)) < REL[dtype]


def test_gated_batch_one_and_backward_through_gate(interpret):
    torch.manual_seed(0)
    lin = nn.Linear(40, 48)
    mod = GatedBlockLinear.from_dense(lin, 16, 0.5, "global")
    x = torch.randn(1, 40)
    mod.backend = "triton"
    y = mod(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    grads = {n: p.grad.clone() for n, p in mod.named_parameters()}
    mod.zero_grad()
    mod.backend = "torch"
    mod(x).backward(gy)
    for n, p in mod.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)
    assert grads["gate.weight"].abs().sum() > 0  # the gate network is trained through g


def test_gated_explicit_path_stays_on_torch(interpret, monkeypatch):
    import compressor.kernels.triton_gated as tg

    mod = GatedBlockLinear.from_dense(nn.Linear(32, 32), 16, 0.5)
    mod.backend = "triton"
    monkeypatch.setattr(tg, "gated_block_linear_triton", lambda *a, **k: pytest.fail("explicit path used triton"))
    x = torch.randn(2, 32)
    idx, g = mod.select(x)
    ref = gated_block_linear(x, mod.blocks, idx, g, mod.grid, mod.mode, mod.bias, 32, 32, path="bmm")
    torch.testing.assert_close(mod(x, path="ebag"), ref)
