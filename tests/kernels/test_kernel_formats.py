"""Sparse formats: exact round trips (odd shapes, padding) and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from artifact_tools import same_format  # tests/artifact_tools.py

from compressor.kernels import BSR, BalancedBlock, NMPacked, block_mask_grid, is_balanced


@pytest.mark.parametrize("shape,block", [((70, 45), (16, 8)), ((64, 96), (32, 32)), ((5, 7), (4, 4)), ((33, 65), (32, 32))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_balanced_round_trip(shape, block, dtype, block_mask):
    w = torch.randn(shape).to(dtype)
    mask = block_mask(*shape, block, keep=0.5)
    fmt = BalancedBlock.from_dense(w, mask, block)
    R, C = fmt.grid
    assert fmt.values.shape == (R, block[0], fmt.k * block[1])
    assert fmt.col_idx.shape == (R, fmt.k)
    assert fmt.padded_shape == (R * block[0], C * block[1])
    assert torch.equal(fmt.to_dense(), w * mask)
    assert torch.equal(fmt.to_mask(), mask)
    # kernel layout: block row r, slot s, transposed
    vt = fmt.values_t()
    assert vt.shape == (R, fmt.k * block[1], block[0])
    r, s = R - 1, fmt.k - 1
    blk = fmt.values[r, :, s * block[1]:(s + 1) * block[1]]
    assert torch.equal(vt[r, s * block[1]:(s + 1) * block[1], :], blk.t())


def test_padding_is_zero_and_cropped(block_mask):
    w = torch.randn(33, 65)
    mask = block_mask(33, 65, 32, keep=1.0)  # everything kept: the padding must still be zeros
    fmt = BalancedBlock.from_dense(w, mask, 32)
    assert fmt.padded_shape == (64, 96)
    vals = fmt.values.view(2, 32, 3, 32)  # (R, bh, k, bw); all 3 block columns kept, in order
    assert float(vals[1, 1:].abs().sum()) == 0.0  # padded rows 33..63 are zeros
    assert float(vals[:, :, 2, 1:].abs().sum()) == 0.0  # padded cols 65..95 are zeros
    assert torch.equal(fmt.to_dense(), w)


def test_balanced_pad_rows_for_unbalanced(block_mask):
    w = torch.randn(50, 70)
    mask = block_mask(50, 70, (16, 16), keep=0.5, balanced=False)
    assert not is_balanced(mask, 16)
    with pytest.raises(ValueError, match="not balanced"):
        BalancedBlock.from_dense(w, mask, 16)
    fmt = BalancedBlock.from_dense(w, mask, 16, pad_rows=True)
    counts = block_mask_grid(mask, (16, 16)).sum(1)
    assert fmt.k == int(counts.max())
    assert torch.equal(fmt.row_nnz, counts)
    for r in range(fmt.grid[0]):  # no duplicate columns within a row
        assert fmt.col_idx[r].unique().numel() == fmt.k
    assert torch.equal(fmt.to_dense(), w * mask)
    assert torch.equal(fmt.to_mask(), mask)


@pytest.mark.parametrize("shape,block", [((70, 45), (16, 8)), ((64, 96), (32, 32)), ((9, 3), (4, 4))])
def test_bsr_round_trip(shape, block, block_mask):
    w = torch.randn(shape, dtype=torch.float64)
    mask = block_mask(*shape, block, keep=0.4, balanced=False)
    fmt = BSR.from_dense(w, mask, block)
    assert fmt.crow_indices[-1] == fmt.nnzb == int(block_mask_grid(mask, block).sum())
    assert torch.equal(fmt.to_dense(), w * mask)
    assert torch.equal(fmt.to_mask(), mask)
    torch_bsr = fmt.to_torch().to_dense()[: shape[0], : shape[1]]
    assert torch.equal(torch_bsr, w * mask)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("inp", [16, 18, 21])
def test_nm_round_trip(n, m, inp, nm_mask):
    w = torch.randn(13, inp)
    mask = nm_mask(w, n, m)
    fmt = NMPacked.from_dense(w, mask, n, m)
    assert fmt.values.shape == (13, -(-inp // m), n)
    assert torch.equal(fmt.to_dense(), w * mask)
    assert torch.equal(fmt.to_mask(), mask)


def test_nm_sparser_than_n(nm_mask):
    w = torch.randn(6, 12)
    mask = nm_mask(w, 1, 4)  # 1:4 is valid for a 2:4 format (spare slots padded)
    fmt = NMPacked.from_dense(w, mask, 2, 4)
    assert torch.equal(fmt.to_dense(), w * mask)
    assert torch.equal(fmt.to_mask(), mask)


def test_deterministic(block_mask):
    w = torch.randn(40, 40)
    mask = block_mask(40, 40, 8, keep=0.5, balanced=False)
    a = BalancedBlock.from_dense(w, mask, 8, pad_rows=True)
    b = BalancedBlock.from_dense(w, mask, 8, pad_rows=True)
    assert torch.equal(a.values, b.values) and torch.equal(a.col_idx, b.col_idx)


# -- bad input ---------------------------------------------------------------------------------

def test_mask_shape_mismatch():
    with pytest.raises(ValueError, match="mask shape"):
        BalancedBlock.from_dense(torch.randn(8, 8), torch.ones(8, 9, dtype=torch.bool), 4)


def test_mask_dtype():
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        BSR.from_dense(torch.randn(8, 8), torch.ones(8, 8), 4)


def test_partial_block_rejected():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :4] = True
    mask[0, 5] = True
    with pytest.raises(ValueError, match=r"block \(0, 1\).*partly kept"):
        BalancedBlock.from_dense(torch.randn(8, 8), mask, 4, pad_rows=True)
    with pytest.raises(ValueError, match="whole 4x4 blocks"):
        BSR.from_dense(torch.randn(8, 8), mask, 4)


def test_edge_block_judged_on_in_range_entries():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[4:, 4:] = True  # the in-range part of the corner 4x4 block: a whole block
    fmt = BSR.from_dense(torch.randn(6, 6), mask, 4)
    assert fmt.nnzb == 1


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_unsupported_dtype(dtype):
    w = torch.zeros(8, 8, dtype=dtype)
    with pytest.raises(TypeError, match="weight has unsupported dtype"):
        BalancedBlock.from_dense(w, torch.ones(8, 8, dtype=torch.bool), 4)


@pytest.mark.parametrize("block", [0, (4,), (4, -1), "4", (4.0, 4)])
def test_bad_block(block):
    with pytest.raises(ValueError, match="block must be"):
        BSR.from_dense(torch.randn(8, 8), None, block)


def test_nm_too_many_kept():
    mask = torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="not 2:4: row 0, input group 0"):
        NMPacked.from_dense(torch.randn(4, 8), mask, 2, 4)
    with pytest.raises(ValueError, match="n must be <= m"):
        NMPacked.from_dense(torch.randn(4, 8), None, 5, 4)


@pytest.mark.parametrize("shape,block", [((70, 45), (16, 8)), ((64, 96), (32, 32)), ((5, 7), (4, 4))])
@pytest.mark.parametrize("balanced", [True, False])
def test_bsr_and_balanced_convert_like_the_dense_round_trip(shape, block, balanced, block_mask):
    # the reference: from_dense of the dense masked weight; the conversions never build that matrix
    w = torch.randn(shape)
    mask = block_mask(*shape, block, keep=0.4, balanced=balanced)
    bsr = BSR.from_dense(w, mask, block)
    same_format(bsr.to_balanced(), BalancedBlock.from_dense(w, mask, block, pad_rows=True))
    same_format(BalancedBlock.from_dense(w, mask, block, pad_rows=True).to_bsr(), bsr)


@pytest.mark.parametrize("shape", [(8, 16), (64, 32), (6, 8)])
def test_nm_transposable_from_slots_matches_the_mask_check(shape):
    from compressor.kernels import is_transposable_2to4

    gen = torch.Generator().manual_seed(1)
    tile = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    out, inp = shape
    masks = [tile.repeat(-(-out // 4), inp // 4)[:out]]  # transposable where out is a multiple of 4
    broken = masks[0].clone()
    broken[:4, :4] = torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool)  # rows 2:4, columns 0 and 1 kept 4 times
    masks.append(broken)
    masks.append(torch.rand(out, inp // 4, 4, generator=gen).argsort(dim=2).lt(2).view(out, inp))  # random rows 2:4
    for mask in masks:
        fmt = NMPacked.from_dense(torch.randn(shape, generator=gen), mask, 2, 4)
        assert fmt.transposable() == is_transposable_2to4(mask)
    assert is_transposable_2to4(masks[0]) is (out % 4 == 0) and not is_transposable_2to4(broken)  # both answers seen
