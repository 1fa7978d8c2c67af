"""Packed layouts (compressor.packing): exact round trips against dense math, sizes, and checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from artifact_tools import same_format  # tests/artifact_tools.py

from compressor import packing
from compressor.kernels import BSR, BalancedBlock, BlockSparseLinear, NMPacked
from compressor.packing import (check_parts, check_record, index_dtype, kernel_format, pack, pack_bits, packed_bytes,
                                unpack, unpack_bits)


def blocky(rows, cols, block, keep_cols_per_row, gen, balanced=True):
    """A bool mask of whole ``block`` blocks; ``keep_cols_per_row`` block columns per block row."""
    R, C = math.ceil(rows / block[0]), math.ceil(cols / block[1])
    grid = torch.zeros(R, C, dtype=torch.bool)
    for r in range(R):
        k = keep_cols_per_row if balanced else int(torch.randint(0, C + 1, (1,), generator=gen))
        grid[r, torch.randperm(C, generator=gen)[:k]] = True
    return grid.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:rows, :cols]


def nm(rows, cols, n, m, gen):
    G = math.ceil(cols / m)
    idx = torch.rand(rows, G, m, generator=gen).argsort(dim=2)[:, :, :n]
    return torch.zeros(rows, G, m, dtype=torch.bool).scatter_(2, idx, True).view(rows, G * m)[:, :cols]


def infos(parts):
    return {f"__packed__.w.{k}": (tuple(v.shape), v.dtype) for k, v in parts.items()}


def round_trip(weight, mask, pattern):
    record, parts = pack(weight, mask, pattern)
    check_record("w", record)
    check_parts("w", record, infos(parts))
    dense, got_mask = unpack("w", record, parts)
    assert torch.equal(dense, weight * mask) and dense.dtype == weight.dtype  # the reference: dense math
    assert torch.equal(got_mask, mask)
    return record, parts


GEN = torch.Generator().manual_seed(0)
CASES = [
    ("balanced_block", (64, 48), lambda: blocky(64, 48, (16, 16), 1, GEN), {"kind": "balanced_block", "h": 16, "w": 16}),
    ("bsr", (64, 48), lambda: blocky(64, 48, (8, 8), 0, GEN, balanced=False), {"kind": "block", "h": 8, "w": 8}),
    ("nm", (40, 64), lambda: nm(40, 64, 2, 4, GEN), {"kind": "nm", "n": 2, "m": 4}),
    ("bitmask", (40, 64), lambda: nm(40, 64, 4, 8, GEN), {"kind": "nm", "n": 4, "m": 8, "transposable": True}),
    ("bitmask", (30, 20, 3), lambda: torch.rand(30, 20, 3, generator=GEN) < 0.3, {"kind": "unstructured"}),
    ("csr", (50, 300), lambda: torch.rand(50, 300, generator=GEN) < 0.02, {"kind": "unstructured"}),
    ("dense", (7, 5), lambda: torch.ones(7, 5, dtype=torch.bool), None),
    ("bitmask", (9,), lambda: torch.rand(9, generator=GEN) < 0.5, None),
]


@pytest.mark.parametrize("layout,shape,make_mask,pattern", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_layout_round_trips_exactly(layout, shape, make_mask, pattern, dtype):
    weight = torch.randn(shape, generator=GEN).to(dtype)
    record, _ = round_trip(weight, make_mask(), pattern)
    assert record["layout"] == layout and record["dtype"] == str(dtype).replace("torch.", "")


def test_edges_padding_and_empty_rows():
    w = torch.randn(37, 45, generator=GEN)
    for mask, pattern in [(blocky(37, 45, (8, 8), 2, GEN), {"kind": "balanced_block", "h": 8, "w": 8}),
                          (blocky(37, 45, (8, 8), 0, GEN, balanced=False), {"kind": "block", "h": 8, "w": 8}),
                          (nm(37, 45, 2, 4, GEN), {"kind": "nm", "n": 2, "m": 4}),
                          (torch.zeros(37, 45, dtype=torch.bool), {"kind": "balanced_block", "h": 8, "w": 8})]:
        round_trip(w, mask, pattern)
    # a mask that breaks its pattern (a partial block) still packs, in a generic layout
    mask = blocky(64, 48, (16, 16), 1, GEN)
    mask[0, 0] = ~mask[0, 0]
    record, _ = round_trip(torch.randn(64, 48, generator=GEN), mask, {"kind": "balanced_block", "h": 16, "w": 16})
    assert record["layout"] in ("bitmask", "csr")


def test_sizes_are_the_formulas():
    w = torch.randn(64, 256, generator=GEN)
    mask = nm(64, 256, 2, 4, GEN)
    nnz = int(mask.sum())
    # 2:4: fp32 values + 2 bits per kept value
    assert packed_bytes(mask, {"kind": "nm", "n": 2, "m": 4}) == nnz * 4 + math.ceil(nnz * 2 / 8)
    # 4:8: a bitmask (8 bits per group of 4 kept) is smaller than 3-bit indices (12 bits), so it wins
    mask48 = nm(64, 256, 4, 8, GEN)
    assert packed_bytes(mask48, {"kind": "nm", "n": 4, "m": 8}) == 64 * 256 // 8 + int(mask48.sum()) * 4
    # balanced 16x16 blocks: values + one uint8 block column per kept block (16 block columns)
    mb = blocky(64, 256, (16, 16), 2, GEN)
    record, parts = pack(w, mb, {"kind": "balanced_block", "h": 16, "w": 16})
    assert parts["col_idx"].dtype == torch.uint8 and packed_bytes(mb, {"kind": "balanced_block", "h": 16, "w": 16}) \
        == int(mb.sum()) * 4 + 4 * 2
    assert index_dtype(255) == torch.uint8 and index_dtype(256) == torch.int16 and index_dtype(40000) == torch.int32


def test_bits_match_numpy_little_endian():
    flags = torch.rand(1001, generator=GEN) < 0.5
    packed = pack_bits(flags)
    assert np.array_equal(packed.numpy(), np.packbits(flags.numpy(), bitorder="little"))
    assert torch.equal(unpack_bits(packed, 1001), flags)


def test_bad_records_and_parts_name_the_tensor():
    w = torch.randn(16, 16, generator=GEN)
    record, parts = pack(w, nm(16, 16, 2, 4, GEN), {"kind": "nm", "n": 2, "m": 4})
    with pytest.raises(ValueError, match=r"layouts\['w'\]: layout version 9 is not supported"):
        check_record("w", {**record, "version": 9})
    with pytest.raises(ValueError, match=r"__packed__\.w\.idx: stored"):
        check_parts("w", record, {**infos(parts), "__packed__.w.idx": ((3,), torch.uint8)})
    with pytest.raises(ValueError, match=r"__packed__\.w\.values: missing"):
        check_parts("w", record, {k: v for k, v in infos(parts).items() if not k.endswith("values")})
    bad = {**parts, "idx": torch.full_like(parts["idx"], 0b01010101)}  # every slot at position 1: not ascending
    with pytest.raises(ValueError, match=r"__packed__\.w\.idx: positions"):
        unpack("w", record, bad)
    record, parts = pack(w, torch.rand(16, 16, generator=GEN) < 0.3, {"kind": "unstructured"})
    with pytest.raises(ValueError, match=r"__packed__\.w\.bits: keeps"):
        unpack("w", record, {**parts, "bits": parts["bits"] ^ 1})
    record, parts = pack(torch.randn(20, 600, generator=GEN), torch.rand(20, 600, generator=GEN) < 0.01, None)
    assert record["layout"] == "csr"
    col = parts["col_idx"].clone()
    col[0] = 600
    with pytest.raises(ValueError, match=r"__packed__\.w\.col_idx: column indices outside"):
        unpack("w", record, {**parts, "col_idx": col})
    crow = parts["crow"].clone()
    crow[1], crow[2] = crow[2], crow[1] - 1
    with pytest.raises(ValueError, match=r"__packed__\.w\.crow"):
        unpack("w", record, {**parts, "crow": crow})
    record, parts = pack(w, blocky(16, 16, (4, 4), 2, GEN), {"kind": "balanced_block", "h": 4, "w": 4})
    dup = parts["col_idx"].clone()
    dup[:, 1] = dup[:, 0]
    with pytest.raises(ValueError, match=r"__packed__\.w\.col_idx: block columns must be strictly ascending"):
        unpack("w", record, {**parts, "col_idx": dup})


def nm_short_last_group(rows, cols, gen):
    """2:8 whose last group (5 columns) keeps one, at its last column, so its spare slot goes to
    padding in the file and to the group's first unkept column in from_dense."""
    mask = nm(rows, cols, 2, 8, gen)
    mask[:, cols - 5:] = False
    mask[:, cols - 1] = True
    return mask


def _unbalanced(rows, cols, block, gen):
    """Whole blocks, one block row keeping one block more than the others (padding adds < 25%)."""
    mask = blocky(rows, cols, block, 4, gen)
    grid_cols = (~mask[0].view(-1, block[1]).any(dim=1)).nonzero().flatten()
    mask[: block[0], grid_cols[0] * block[1]:(grid_cols[0] + 1) * block[1]] = True
    return mask


# (file layout written, shape, mask, pattern, kernel request): the files a swapped layer can come from
KERNEL_CASES = [
    ("balanced_block", (64, 72), lambda: blocky(64, 72, (8, 8), 3, GEN), {"kind": "balanced_block", "h": 8, "w": 8},
     {"block": (8, 8)}),
    ("balanced_block", (64, 72), lambda: blocky(64, 72, (8, 8), 3, GEN), {"kind": "balanced_block", "h": 8, "w": 8},
     {"block": (8, 8), "layout": "bsr"}),
    ("bsr", (64, 256), lambda: _unbalanced(64, 256, (8, 8), GEN), {"kind": "block", "h": 8, "w": 8},
     {"block": (8, 8)}),  # auto: padded to balanced
    ("bsr", (64, 48), lambda: blocky(64, 48, (8, 8), 0, GEN, balanced=False), {"kind": "block", "h": 8, "w": 8},
     {"block": (8, 8)}),  # auto: too unbalanced, stays BSR
    ("bsr", (64, 48), lambda: blocky(64, 48, (8, 8), 0, GEN, balanced=False), {"kind": "block", "h": 8, "w": 8},
     {"block": (8, 8), "layout": "balanced"}),
    ("bitmask", (61, 45), lambda: blocky(61, 45, (8, 8), 2, GEN), None, {"block": (8, 8)}),
    ("csr", (61, 400), lambda: blocky(61, 400, (1, 8), 1, GEN), None, {"block": (1, 8), "layout": "bsr"}),
    ("dense", (24, 16), lambda: torch.ones(24, 16, dtype=torch.bool), None, {"block": (8, 8)}),
    ("nm", (40, 64), lambda: nm(40, 64, 2, 4, GEN), {"kind": "nm", "n": 2, "m": 4}, {"nm": (2, 4)}),
    ("nm", (12, 253), lambda: nm_short_last_group(12, 253, GEN), {"kind": "nm", "n": 2, "m": 8}, {"nm": (2, 8)}),
    ("bitmask", (40, 64), lambda: nm(40, 64, 4, 8, GEN), {"kind": "nm", "n": 4, "m": 8}, {"nm": (4, 8)}),
    ("bitmask", (37, 30), lambda: nm(37, 30, 2, 4, GEN), {"kind": "nm", "n": 2, "m": 4}, {"nm": (2, 4)}),
    ("csr", (30, 640), lambda: nm(30, 640, 1, 64, GEN), None, {"nm": (1, 64)}),
]


@pytest.mark.parametrize("layout,shape,make_mask,pattern,request_", KERNEL_CASES)
@pytest.mark.parametrize("band_entries", [packing.BAND_ENTRIES, 100])
def test_kernel_format_equals_from_dense_of_the_unpacked_weight(monkeypatch, layout, shape, make_mask, pattern,
                                                                request_, band_entries):
    # reference: the kernels' own from_dense of the dense masked weight, as swap_kernels builds them
    monkeypatch.setattr(packing, "BAND_ENTRIES", band_entries)  # 100: many bands, odd band heights
    weight, mask = torch.randn(shape, generator=GEN), make_mask()
    record, parts = pack(weight, mask, pattern)
    assert record["layout"] == layout
    got = kernel_format("w", record, parts, **request_)
    if "nm" in request_:
        want = NMPacked.from_dense(weight, mask, *request_["nm"])
    else:
        block, chosen = request_["block"], request_.get("layout", "auto")
        if chosen == "auto":
            chosen = BlockSparseLinear.choose_layout(mask, block)
        want = (BalancedBlock.from_dense(weight, mask, block, pad_rows=True) if chosen == "balanced"
                else BSR.from_dense(weight, mask, block))
    same_format(got, want)
    assert torch.equal(got.to_dense(), weight * mask) and torch.equal(got.to_mask(), mask)


def test_kernel_format_refuses_what_the_kernel_cannot_hold():
    w = torch.randn(32, 32, generator=GEN)
    record, parts = pack(w, blocky(32, 32, (8, 8), 2, GEN), {"kind": "balanced_block", "h": 8, "w": 8})
    with pytest.raises(ValueError, match=r"layouts\['w'\]: a balanced_block layout of \(8, 8\) cannot feed a kernel "
                                         r"module of block \(4, 4\)"):
        kernel_format("w", record, parts, block=(4, 4))
    with pytest.raises(ValueError, match=r"cannot feed a kernel module of nm \(2, 4\)"):
        kernel_format("w", record, parts, nm=(2, 4))
    record, parts = pack(w, torch.rand(32, 32, generator=GEN) < 0.5, None)  # unstructured: no whole blocks
    with pytest.raises(ValueError, match=r"__packed__\.w\.bits: rows 0\.\.31 do not fit the kernel module \(mask "
                                         r"does not form whole 8x8 blocks"):
        kernel_format("w", record, parts, block=(8, 8))
    with pytest.raises(ValueError, match=r"__packed__\.w\.bits: rows 0\.\.31 do not fit .*mask is not 2:4"):
        kernel_format("w", record, parts, nm=(2, 4))
    record, parts = pack(w, nm(32, 32, 2, 4, GEN), {"kind": "nm", "n": 2, "m": 4})
    bad = {**parts, "idx": torch.full_like(parts["idx"], 0b01010101)}  # every slot at position 1
    with pytest.raises(ValueError, match=r"__packed__\.w\.idx: positions must be ascending"):
        kernel_format("w", record, bad, nm=(2, 4))


@pytest.mark.parametrize("m", [2, 3, 5, 8, 16, 33, 64])
def test_nm_positions_of_every_bit_width_round_trip(m):
    # 1 to 6 bits per position: the fast whole-byte path (1, 2, 4 bits) and the straddling one
    w = torch.randn(9, 5 * m, generator=GEN)
    mask = nm(9, 5 * m, 1, m, GEN)
    record, parts = round_trip(w, mask, {"kind": "nm", "n": 1, "m": m})
    assert record["layout"] == "nm"
    same_format(kernel_format("w", record, parts, nm=(1, m)), NMPacked.from_dense(w, mask, 1, m))
