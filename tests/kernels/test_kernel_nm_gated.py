"""NMLinear and GatedBlockLinear against independent dense references."""

from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from compressor.kernels import GatedBlockLinear, NMLinear, gated_block_linear, kept_blocks, nm_linear, select_blocks
from gated_reference import gated_linear_reference  # tests/gated_reference.py

# -- N:M -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m,inp", [(2, 4, 30), (4, 8, 37), (1, 4, 16)])
@pytest.mark.parametrize("batch", [1, 2, 9])  # small batch gathers; >= LARGE_BATCH_NM scatters to dense
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nm_linear_matches_dense(n, m, inp, batch, dtype, nm_mask, dense_ref, tol):
    lin = nn.Linear(inp, 11).to(dtype)
    mask = nm_mask(lin.weight.detach(), n, m)
    mod = NMLinear.from_dense(lin, mask, n, m)
    x = torch.randn(batch, inp).to(dtype)
    with torch.no_grad():
        got = mod(x)
        ref_dtype = torch.float32 if dtype == torch.bfloat16 else dtype  # bf16: fp32 reference
        want = dense_ref(x.to(ref_dtype), lin.weight.to(ref_dtype), mask, lin.bias.to(ref_dtype)).to(dtype)
    assert_close(got, want, **tol(dtype))
    assert torch.equal(mod.to_dense_weight(), lin.weight.detach() * mask)
    assert torch.equal(mod.mask(), mask)


@pytest.mark.parametrize("batch", [2, 9])
def test_nm_gradients(batch, nm_mask, dense_ref):
    lin = nn.Linear(21, 7).double()
    mask = nm_mask(lin.weight.detach(), 2, 4)
    mod = NMLinear.from_dense(lin, mask, 2, 4)
    x = torch.randn(batch, 21, dtype=torch.float64, requires_grad=True)
    mod(x).pow(2).sum().backward()
    gx = x.grad.clone()
    x.grad = None
    w = lin.weight.detach().clone().requires_grad_(True)
    dense_ref(x, w, mask, lin.bias.detach()).pow(2).sum().backward()
    assert_close(gx, x.grad)
    with torch.no_grad():
        mod.values.copy_(mod.values.grad)
    assert_close(mod.to_dense_weight(), w.grad * mask)


def test_nm_functional_and_errors(nm_mask):
    w = torch.randn(5, 8)
    mask = nm_mask(w, 2, 4)
    mod = NMLinear.from_dense(nn.Linear(8, 5), mask)
    x = torch.randn(3, 8)
    y = nm_linear(x, mod.values, mod.columns, None, 8, 8, large_batch=100)
    assert_close(y, F.linear(x, mod.to_dense_weight()))
    with pytest.raises(ValueError, match="not 2:4"):
        NMLinear.from_dense(nn.Linear(8, 5), torch.ones(5, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="last dimension 8"):
        mod(torch.randn(2, 9))


# -- gated block linear ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("path", ["ebag", "bmm", "native"])
@pytest.mark.parametrize("shape,block,keep", [((45, 70), (16, 32), 0.5), ((64, 48), (16, 16), 0.25), ((30, 20), (8, 8), 1.0)])
def test_gated_matchesgated_linear_reference(mode, path, shape, block, keep):
    out, inp = shape
    lin = nn.Linear(inp, out).double()
    mod = GatedBlockLinear.from_dense(lin, block, keep, mode)
    x = torch.randn(5, inp, dtype=torch.float64)
    want = gated_linear_reference(x, lin.weight, lin.bias, mod.gate, block, keep, mode)
    with torch.no_grad():  # the native kernel is inference-only
        assert_close(mod(x, path=path), want)
    assert torch.equal(mod.to_dense_weight(), lin.weight.detach())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["global", "row"])
def test_native_gated_kernel_fp32_batches_and_threads(threads, mode):
    """The compiled kernel against the dense reference in fp32, batch 1 and 3, one and two threads
    (threads split the block rows)."""
    from compressor.kernels import native

    assert native.library() is not None, native.unavailable_reason()  # CI machines have a C compiler
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for inp, out in ((200, 136), (512, 300)):  # the second is large enough for a threaded gate GEMV
            lin = nn.Linear(inp, out)
            mod = GatedBlockLinear.from_dense(lin, (16, 32), 0.5, mode)
            for batch in (1, 3):
                x = torch.randn(batch, inp)
                with torch.no_grad():
                    want = gated_linear_reference(x.double(), lin.weight.double(), lin.bias.double(),
                                                  mod.gate.double(), (16, 32), 0.5, mode).float()
                    mod.gate.float()
                    assert_close(mod(x, path="native"), want, rtol=1e-4, atol=1e-5)
                    assert_close(mod(x), want, rtol=1e-4, atol=1e-5)  # auto takes the native kernel here
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("rank", [0, 5])
def test_fused_native_gated_linear_matches_torch_selection(mode, rank):
    """The one-call kernel (gate GEMV, softplus, top-k, rescale, blocks, bias) chooses the same
    blocks with the same gates as select_blocks, and its output equals the dense reference (fp64,
    odd shapes that need padding, batch 4)."""
    from compressor.kernels.gated_rnn import gated_linear
    from compressor.kernels.native import fused_eligible, gated_linear_fused

    lin = nn.Linear(70, 45).double()
    mod = gated_linear(lin, (16, 32), 0.4, mode, rank).double()
    with torch.no_grad():
        for p in mod.gate.parameters():
            p.add_(torch.randn_like(p))  # spread the scores: no near-ties
        x = torch.randn(4, 70, dtype=torch.float64)
        assert fused_eligible(mod, x)
        y, idx, g = gated_linear_fused(mod, x)
        want_idx, want_g = mod.select(x)
        for b in range(4):
            order, want_order = idx[b].argsort(), want_idx[b].argsort()
            assert torch.equal(idx[b][order], want_idx[b][want_order])
            assert_close(g[b][order], want_g[b][want_order])
        want = gated_linear_reference(x, mod.to_dense_weight(), mod.bias, mod.gate, (16, 32), 0.4, mode)
        assert_close(y, want)
        assert_close(mod(x), want)


@pytest.mark.parametrize("backend,fused", [("auto", True), ("native", True), ("torch", False)])
def test_backend_chooses_the_fused_cpu_forward(backend, fused, monkeypatch):
    """``auto`` and ``native`` try the one-call kernel for CPU inference, ``torch`` never does; each
    equals the dense reference."""
    from compressor.kernels import modules
    from compressor.kernels.gated_rnn import gated_linear

    mod = gated_linear(nn.Linear(70, 45).double(), (16, 32), 0.4, "global", 0).double()
    mod.backend = backend
    calls = []
    real = modules.gated_linear_fused
    monkeypatch.setattr(modules, "gated_linear_fused", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(4, 70, dtype=torch.float64)
    with torch.no_grad():
        y = mod(x)
        want = gated_linear_reference(x, mod.to_dense_weight(), mod.bias, mod.gate, (16, 32), 0.4, "global")
    assert bool(calls) == fused
    assert_close(y, want)


def test_fused_kernel_steps_aside_for_gate_hooks():
    """A hook on the gate (the keep-frequency counter uses one) must see the gate run: no fused call."""
    from compressor.kernels.native import fused_eligible

    mod = GatedBlockLinear.from_dense(nn.Linear(40, 36), (8, 16), 0.5)
    seen = []
    handle = mod.gate.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        x = torch.randn(1, 40)
        assert not fused_eligible(mod, x)
        mod(x)
    handle.remove()
    assert seen == [torch.Size([1, mod.grid[0] * mod.grid[1]])]
    with torch.no_grad():
        assert fused_eligible(mod, x)


def test_cpu_inference_path_names_the_path_and_why():
    from compressor.kernels.native import cpu_inference_path

    mod = GatedBlockLinear.from_dense(nn.Linear(40, 36), (8, 16), 0.5)
    assert cpu_inference_path(mod) == "native"
    mod.gate = nn.Sequential(nn.Linear(40, mod.gate.out_features))  # a gate the kernel does not know
    assert cpu_inference_path(mod).startswith("torch (gate Sequential")
    with torch.no_grad():  # and the module still runs, on the torch path
        x = torch.randn(2, 40)
        idx, g = select_blocks(F.softplus(mod.gate(x)), mod.k, mod.grid, mod.mode)
        want = gated_block_linear(x, mod.blocks, idx, g, mod.grid, mod.mode, mod.bias, 40, 36, path="bmm")
        assert_close(mod(x), want)


def test_native_kernels_check_sizes_they_cannot_see():
    """The C code reads no bounds: bad indices are an error, and a module whose tensors no longer
    fit its grid is not given to the fused kernel."""
    from compressor.kernels.native import fused_eligible, gated_block_matvec

    blocks = torch.randn(6, 8, 4)
    x, g = torch.randn(1, 16), torch.ones(1, 2)
    with pytest.raises(ValueError, match=r"block indices in \[0, 6\)"):
        gated_block_matvec(x, blocks, torch.tensor([[0, 6]]), g, (3, 2))
    mod = GatedBlockLinear.from_dense(nn.Linear(40, 36), (8, 16), 0.5)
    with torch.no_grad():
        x = torch.randn(1, 40)
        assert fused_eligible(mod, x)
        mod.gate = nn.Linear(40, mod.gate.out_features - 1)  # one score short of the blocks
        assert not fused_eligible(mod, x)


def test_native_gated_kernel_refuses_training_and_auto_falls_back():
    mod = GatedBlockLinear.from_dense(nn.Linear(40, 36), (8, 16), 0.5)
    x = torch.randn(2, 40)
    with pytest.raises(RuntimeError, match="inference-only"):
        mod(x, path="native")
    y = mod(x)  # auto under autograd: the differentiable ebag path
    assert y.requires_grad
    with pytest.raises(TypeError, match="fp32 or fp64"):
        mod.to(torch.bfloat16)(x.bfloat16(), path="native")


def test_native_kernel_can_be_disabled(tmp_path):
    """COMPRESSOR_NATIVE=0: no build, a reason, and the torch path gives the same outputs."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, torch.nn as nn\n"
        "from compressor.kernels import GatedBlockLinear, native\n"
        "torch.manual_seed(0)\n"
        "mod = GatedBlockLinear.from_dense(nn.Linear(40, 36), (8, 16), 0.5)\n"
        "with torch.no_grad():\n"
        "    y = mod(torch.randn(1, 40))\n"
        "print(native.library() is None, native.unavailable_reason(), float(y.abs().sum()))\n")
    env = dict(os.environ, COMPRESSOR_NATIVE="0", COMPRESSOR_CACHE=str(tmp_path))
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert not (tmp_path / "native").exists()
    env["COMPRESSOR_NATIVE"] = "1"
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert off[0] == "True" and "COMPRESSOR_NATIVE=0" in " ".join(off)
    assert on[0] == "False" and len(list((tmp_path / "native").glob("*.so"))) == 1  # built into the cache
    assert abs(float(off[-1]) - float(on[-1])) < 1e-4 * abs(float(off[-1]))


@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("path", ["ebag", "bmm", "auto"])
def test_gated_gradients(mode, path):
    lin = nn.Linear(40, 36).double()
    mod = GatedBlockLinear.from_dense(lin, (8, 16), 0.5, mode)
    x = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 36, dtype=torch.float64)
    (mod(x, path=path) * up).sum().backward()
    got = {"x": x.grad.clone(), "gate_w": mod.gate.weight.grad.clone(), "gate_b": mod.gate.bias.grad.clone(),
           "bias": mod.bias.grad.clone()}
    assert mod.blocks.grad is not None and float(mod.gate.weight.grad.abs().sum()) > 0
    x.grad = None
    w = lin.weight.detach().clone().requires_grad_(True)
    gate = nn.Linear(40, mod.gate.out_features).double()
    gate.load_state_dict(mod.gate.state_dict())
    b = lin.bias.detach().clone().requires_grad_(True)
    (gated_linear_reference(x, w, b, gate, (8, 16), 0.5, mode) * up).sum().backward()
    assert_close(got["x"], x.grad)
    assert_close(got["gate_w"], gate.weight.grad)
    assert_close(got["gate_b"], gate.bias.grad)
    assert_close(got["bias"], b.grad)
    with torch.no_grad():
        mod.blocks.copy_(mod.blocks.grad)
    assert_close(mod.to_dense_weight(), w.grad)


def test_gated_float32_and_bf16():
    lin = nn.Linear(70, 45)
    mod = GatedBlockLinear.from_dense(lin, (16, 32), 0.5)
    x = torch.randn(3, 70)
    with torch.no_grad():
        want = gated_linear_reference(x, lin.weight, lin.bias, mod.gate, (16, 32), 0.5, "global")
        assert_close(mod(x), want, atol=2e-5, rtol=1e-4)
        mb = GatedBlockLinear.from_dense(lin.to(torch.bfloat16), (16, 32), 0.5)
        assert mb(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_select_blocks_row_mode_layout():
    scores = torch.rand(2, 12)
    idx, g = select_blocks(scores, 2, (3, 4), "row")
    assert idx.shape == (2, 6)
    assert torch.equal(idx.div(4, rounding_mode="floor"), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2))
    kept = torch.gather(scores, 1, idx)
    assert_close(g, kept * 12 / kept.sum(1, keepdim=True))


def test_gated_deterministic_and_errors():
    lin = nn.Linear(32, 32)
    a = GatedBlockLinear.from_dense(lin, 8, 0.5)
    b = GatedBlockLinear.from_dense(lin, 8, 0.5)
    for (k1, v1), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert kept_blocks(0.5, (4, 4), "global") == 8 and kept_blocks(0.3, (4, 4), "row") == 2
    with pytest.raises(ValueError, match="keep"):
        GatedBlockLinear.from_dense(lin, 8, 0.0)
    with pytest.raises(ValueError, match="mode must be"):
        GatedBlockLinear.from_dense(lin, 8, 0.5, mode="column")
    with pytest.raises(ValueError, match="gate must be"):
        GatedBlockLinear.from_dense(lin, 8, 0.5, gate=nn.Linear(32, 3))
    with pytest.raises(ValueError, match="path must be"):
        a(torch.randn(1, 32), path="triton")


def test_nm_training_cannot_grow_pruned_weights(dense_ref):
    """Groups keeping fewer than n weights have spare slots; they get no gradient, so an optimizer
    step leaves every pruned position at zero."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 6).double()
    mask = torch.zeros(6, 16, dtype=torch.bool)
    mask[:, 0::4] = True  # 1 of every 4: each group has one spare slot for n=2
    mask[:3, 1::4] = True  # rows 0-2 keep 2 of 4
    mod = NMLinear.from_dense(lin, mask, 2, 4)
    x = torch.randn(5, 16, dtype=torch.float64)
    mod(x).pow(2).sum().backward()
    w = lin.weight.detach().clone().requires_grad_(True)
    dense_ref(x, w, mask, lin.bias.detach()).pow(2).sum().backward()
    with torch.no_grad():
        mod.values.sub_(mod.values.grad)
    assert torch.equal(mod.to_dense_weight() != 0, mask & (lin.weight.detach() - w.grad != 0))
    assert_close(mod.to_dense_weight(), (lin.weight.detach() - w.grad) * mask)
    assert_close(mod.trainable_dense_weight(), mod.to_dense_weight())


def test_sparse_weight_linear_autograd_with_dense_operators():
    """The training function of the 2:4 path (forward through W, grad_x through W^T, grad_W dense),
    run with plain padded dense operators, against autograd on F.linear."""
    from compressor.kernels.semi_structured import _SparseWeightLinear

    torch.manual_seed(0)
    w = torch.randn(10, 12, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    w_pad = F.pad(w.detach(), (0, 52, 0, 54))  # (64, 64), as the semi-structured cache pads
    y = _SparseWeightLinear.apply(x, w, w_pad, w_pad.t().contiguous())
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    y_ref = F.linear(x, w)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), g)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)
    assert_close(gw, gw_ref)


def test_nm_semi_structured_training_needs_transposable_mask(nm_mask):
    tile = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    lin = nn.Linear(16, 8).half()
    x = torch.randn(3, 16, dtype=torch.float16)
    transposable = NMLinear.from_dense(lin, tile.repeat(2, 4), 2, 4)
    rows_only = NMLinear.from_dense(lin, torch.tensor([[1, 1, 0, 0]], dtype=torch.bool).repeat(8, 4), 2, 4)
    assert transposable.transposable and not rows_only.transposable
    assert "transposable 2:4" in rows_only.semi_structured_reason(x)  # training: W^T must be 2:4 too
    with torch.no_grad():  # inference needs only W to be 2:4
        assert "transposable" not in (rows_only.semi_structured_reason(x) or "")
    if not torch.cuda.is_available():
        assert "CUDA only" in transposable.semi_structured_reason(x)
