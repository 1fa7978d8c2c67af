"""Fixtures for the sparse-kernel tests: mask makers, tolerances, small dense references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

#: (atol, rtol) per dtype for comparing an op against the dense masked reference.
TOLERANCES = {
    torch.float32: (2e-5, 1e-4),
    torch.float64: (1e-11, 1e-10),
    torch.bfloat16: (6e-2, 3e-2),
}


@pytest.fixture
def tol():
    """``tol(dtype) -> dict(atol=..., rtol=...)`` for torch.testing.assert_close."""

    def get(dtype: torch.dtype) -> dict:
        atol, rtol = TOLERANCES[dtype]
        return {"atol": atol, "rtol": rtol}

    return get


@pytest.fixture
def block_mask():
    """``block_mask(out, inp, block, keep, balanced=True, seed=0)``: random bool mask of whole blocks.

    Balanced: every block row keeps ``max(1, round(keep * C))`` blocks; unbalanced: each block kept
    with probability ``keep`` (rows differ). Blocks overhanging the edge are cropped.
    """

    def make(out: int, inp: int, block, keep: float = 0.5, balanced: bool = True, seed: int = 0) -> torch.Tensor:
        bh, bw = (block, block) if isinstance(block, int) else block
        R, C = -(-out // bh), -(-inp // bw)
        gen = torch.Generator().manual_seed(seed)
        scores = torch.rand(R, C, generator=gen)
        if balanced:
            k = max(1, round(keep * C))
            grid = torch.zeros(R, C, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
        else:
            grid = scores < keep
            grid[0] = True  # make rows clearly unbalanced
            grid[-1] = False
            grid[-1, 0] = True
        return grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out, :inp]

    return make


@pytest.fixture
def nm_mask():
    """``nm_mask(weight, n, m)``: keep the n largest |w| of every m consecutive inputs (last group padded)."""

    def make(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
        out, inp = weight.shape
        pad = (-inp) % m
        scores = F.pad(weight.abs().float(), (0, pad), value=-1.0).view(out, -1, m)  # padding never chosen first
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(2, scores.topk(n, dim=2).indices, True)
        return keep.view(out, -1)[:, :inp]

    return make


@pytest.fixture
def dense_ref():
    """The independent reference every sparse op is checked against: ``F.linear(x, w * mask, b)``."""

    def ref(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None):
        w = weight if mask is None else weight * mask
        return F.linear(x, w, bias)

    return ref
