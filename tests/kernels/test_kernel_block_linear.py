"""BlockSparseLinear / balanced_block_linear / bsr_linear against F.linear(x, w * mask, b)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from compressor.kernels import BSR, BalancedBlock, BlockSparseLinear, balanced_block_linear, bsr_linear

SHAPES = [((45, 70), (8, 16)), ((33, 65), (32, 32)), ((64, 64), (16, 16))]  # (out, in), block


def _linear(out, inp, dtype=torch.float32, bias=True):
    lin = nn.Linear(inp, out, bias=bias).to(dtype)
    return lin


@pytest.mark.parametrize("shape,block", SHAPES)
@pytest.mark.parametrize("layout", ["balanced", "bsr"])
@pytest.mark.parametrize("batch", [1, 3, 130])  # 130 >= DENSE_BATCH: the scatter-to-dense path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_matches_dense_reference(shape, block, layout, batch, dtype, block_mask, dense_ref, tol):
    out, inp = shape
    lin = _linear(out, inp, dtype)
    mask = block_mask(out, inp, block, keep=0.4, balanced=(layout == "balanced"))
    mod = BlockSparseLinear.from_dense(lin, mask, block, layout=layout)
    assert mod.layout == layout
    x = torch.randn(batch, inp).to(dtype)
    with torch.no_grad():
        got = mod(x)
        if dtype == torch.bfloat16:  # reference in fp32 on the same bf16 inputs
            want = dense_ref(x.float(), lin.weight.float(), mask, lin.bias.float()).to(dtype)
        else:
            want = dense_ref(x, lin.weight, mask, lin.bias)
    assert got.shape == (batch, out) and got.dtype == dtype
    assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("layout", ["balanced", "bsr"])
def test_leading_dims_and_no_bias(layout, block_mask, dense_ref):
    lin = _linear(20, 30, bias=False)
    mask = block_mask(20, 30, 8, keep=0.5, balanced=(layout == "balanced"))
    mod = BlockSparseLinear.from_dense(lin, mask, (8, 8), layout=layout)
    x = torch.randn(2, 5, 30)
    assert_close(mod(x), dense_ref(x, lin.weight, mask, None), atol=2e-5, rtol=1e-4)


def test_auto_layout_choice(block_mask):
    lin = _linear(64, 64)
    balanced = block_mask(64, 64, 8, keep=0.5)
    assert BlockSparseLinear.from_dense(lin, balanced, 8).layout == "balanced"
    unbalanced = block_mask(64, 64, 8, keep=0.3, balanced=False)
    assert BlockSparseLinear.from_dense(lin, unbalanced, 8).layout == "bsr"
    nearly = balanced.clone()
    nearly[:8, :] = False
    nearly[:8, :8 * 3] = True  # first block row keeps 3 of 8 instead of 4: padding costs < 10%
    assert BlockSparseLinear.choose_layout(nearly, 8) == "balanced"


@pytest.mark.parametrize("layout", ["balanced", "bsr"])
def test_round_trip_and_rebuild(layout, block_mask):
    lin = _linear(45, 70)
    mask = block_mask(45, 70, (8, 16), keep=0.5, balanced=(layout == "balanced"))
    mod = BlockSparseLinear.from_dense(lin, mask, (8, 16), layout=layout)
    assert torch.equal(mod.to_dense_weight(), lin.weight.detach() * mask)
    assert torch.equal(mod.mask(), mask)
    back = mod.to_linear()
    x = torch.randn(4, 70)
    assert_close(back(x), mod(x), atol=2e-5, rtol=1e-4)
    # a loader rebuilds from the dense masked weight + mask: identical module, identical state
    again = BlockSparseLinear.from_dense(back, mod.mask(), (8, 16), layout=layout)
    sd1, sd2 = mod.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    again.load_state_dict(sd1)


@pytest.mark.parametrize("layout", ["balanced", "bsr"])
@pytest.mark.parametrize("batch", [1, 2, 6, 130])  # 1: the embedding_bag path
def test_gradients_match_dense_reference(layout, batch, block_mask, dense_ref):
    torch.manual_seed(1)
    lin = _linear(40, 50, torch.float64)
    mask = block_mask(40, 50, (8, 16), keep=0.5, balanced=(layout == "balanced"))
    mod = BlockSparseLinear.from_dense(lin, mask, (8, 16), layout=layout)
    x = torch.randn(batch, 50, dtype=torch.float64, requires_grad=True)
    up = torch.randn(batch, 40, dtype=torch.float64)
    (mod(x) * up).sum().backward()
    gx, gv, gb = x.grad.clone(), mod.values.grad, mod.bias.grad
    x.grad = None
    w = lin.weight.detach().clone().requires_grad_(True)
    b = lin.bias.detach().clone().requires_grad_(True)
    (dense_ref(x, w, mask, b) * up).sum().backward()
    assert_close(gx, x.grad)
    assert_close(gb, b.grad)
    # the values' gradient, put back on the dense grid, is the masked dense weight gradient
    with torch.no_grad():
        mod.values.copy_(gv)
    assert_close(mod.to_dense_weight(), w.grad * mask)


def test_functional_ops_direct(block_mask, dense_ref):
    w, b = torch.randn(30, 50), torch.randn(30)
    mask = block_mask(30, 50, 8, keep=0.5)
    bal = BalancedBlock.from_dense(w, mask, 8)
    bsr = BSR.from_dense(w, mask, 8)
    for x in (torch.randn(3, 50), torch.randn(1, 50)):  # batch 1: the embedding_bag path, index built per call
        y = balanced_block_linear(x, bal.values_t(), bal.col_idx, b, 50, 30)
        assert_close(y, dense_ref(x, w, mask, b), atol=2e-5, rtol=1e-4)
        for large in (1, 10**6):  # both the per-block bmm and the embedding_bag paths
            y = bsr_linear(x, bsr.values.transpose(1, 2).contiguous(), bsr.crow_indices, bsr.col_indices,
                           bsr.row_indices(), b, 50, 30, large_batch=large)
            assert_close(y, dense_ref(x, w, mask, b), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("block", [8, (8, 4)])
def test_weights_left_product_matches_dense(block, block_mask, dense_ref):
    """The blocks-on-the-left order (the exported Scan's option) computes the same product, edge
    blocks cropped, leading dimensions kept, gradients included."""
    w, b = torch.randn(30, 50), torch.randn(30)
    mask = block_mask(30, 50, block, keep=0.4)
    bal = BalancedBlock.from_dense(w, mask, block)
    values = bal.values_t().requires_grad_(True)
    for x in (torch.randn(5, 50), torch.randn(1, 50), torch.randn(2, 3, 50)):
        y = balanced_block_linear(x, values, bal.col_idx, b, 50, 30, weights_left=True)
        assert_close(y, dense_ref(x, w, mask, b), atol=2e-5, rtol=1e-4)
    y.sum().backward()
    reference = values.detach().requires_grad_(True)  # the gradient of the input-left order
    balanced_block_linear(x, reference, bal.col_idx, b, 50, 30).sum().backward()
    assert_close(values.grad, reference.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["balanced", "bsr"])
def test_batch1_index_cache_follows_the_pattern(layout, block_mask, dense_ref):
    """The BSR embedding_bag path caches index tensors built from the pattern buffers: loading another
    pattern's state (same shapes) or writing the buffers in place must not reuse a stale index."""
    torch.manual_seed(3)
    lin = _linear(48, 64)
    masks = [block_mask(48, 64, 16, keep=0.5, seed=s) for s in range(2)]
    assert not torch.equal(masks[0], masks[1])
    mods = [BlockSparseLinear.from_dense(lin, m, 16, layout=layout) for m in masks]
    x = torch.randn(1, 64)
    x3 = torch.randn(3, 64)  # batch 3: the same cached index, repeated per example
    with torch.no_grad():
        assert_close(mods[0](x), dense_ref(x, lin.weight, masks[0], lin.bias), atol=2e-5, rtol=1e-4)
        mods[0].load_state_dict(mods[1].state_dict())
        assert_close(mods[0](x), dense_ref(x, lin.weight, masks[1], lin.bias), atol=2e-5, rtol=1e-4)
        assert_close(mods[0](x3), dense_ref(x3, lin.weight, masks[1], lin.bias), atol=2e-5, rtol=1e-4)
        with torch.inference_mode():
            assert_close(mods[0](x), dense_ref(x, lin.weight, masks[1], lin.bias), atol=2e-5, rtol=1e-4)
        double = mods[0].to(torch.float64)
        xd = x.double()
        assert_close(double(xd), dense_ref(xd, lin.weight.double(), masks[1], lin.bias.double()))


@pytest.mark.parametrize("layout", ["balanced", "bsr"])
def test_empty_mask(layout, dense_ref):
    lin = _linear(16, 16)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mod = BlockSparseLinear.from_dense(lin, mask, 8, layout=layout)
    x = torch.randn(2, 16)
    assert_close(mod(x), dense_ref(x, lin.weight, mask, lin.bias))


def test_bad_inputs(block_mask):
    lin = _linear(16, 16)
    mask = block_mask(16, 16, 8)
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        BlockSparseLinear.from_dense(lin.weight, mask, 8)
    with pytest.raises(ValueError, match="mask shape"):
        BlockSparseLinear.from_dense(lin, mask[:, :8], 8)
    with pytest.raises(ValueError, match="layout must be"):
        BlockSparseLinear.from_dense(lin, mask, 8, layout="csr")
    bad = mask.clone()
    bad[0, 0] = ~bad[0, 0]
    with pytest.raises(ValueError, match="whole 8x8 blocks"):
        BlockSparseLinear.from_dense(lin, bad, 8)
    with pytest.raises(TypeError, match="linear.weight has unsupported dtype"):
        BlockSparseLinear.from_dense(_IntLinear(), mask, 8)
    mod = BlockSparseLinear.from_dense(lin, mask, 8)
    with pytest.raises(ValueError, match="last dimension 16"):
        mod(torch.randn(2, 15))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        mod(torch.randn(2, 16, dtype=torch.float64))


class _IntLinear(nn.Linear):
    def __init__(self):
        super().__init__(16, 16)
        self.weight = nn.Parameter(torch.zeros(16, 16, dtype=torch.int32), requires_grad=False)
