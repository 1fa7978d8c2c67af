"""Independent references for the solver tests: brute force and scipy MILP, never the code under test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch


def brute_tiles(n: int, m: int) -> np.ndarray:
    """Every m x m 0/1 matrix with all row and column sums n, by filtering all row choices: (P, m, m)."""
    rows = []
    for combo in itertools.combinations(range(m), n):
        row = np.zeros(m, dtype=bool)
        row[list(combo)] = True
        rows.append(row)
    out = [np.stack(choice) for choice in itertools.product(rows, repeat=m) if (np.stack(choice).sum(0) == n).all()]
    return np.stack(out)


def milp_tile(values: np.ndarray, n: int) -> np.ndarray:
    """Optimal tile (max sum of ``values`` with n per row and column) by scipy's MILP solver."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    m = values.shape[0]
    a_rows = np.kron(np.eye(m), np.ones((1, m)))  # row i sums x[i, :]
    a_cols = np.kron(np.ones((1, m)), np.eye(m))  # column j sums x[:, j]
    cons = LinearConstraint(np.vstack([a_rows, a_cols]), n, n)
    res = milp(-values.reshape(-1), constraints=cons, integrality=np.ones(m * m), bounds=Bounds(0, 1))
    assert res.success, res.message
    return np.rint(res.x).reshape(m, m).astype(bool)


def tiles_of(mask: torch.Tensor, m: int):
    """Yield (i0, j0, block) over the M x M tiles of a 2-D mask (edge tiles cropped)."""
    rows, cols = mask.shape
    for i0 in range(0, rows, m):
        for j0 in range(0, cols, m):
            yield i0, j0, mask[i0 : i0 + m, j0 : j0 + m]


def assert_exact_transposable(mask: torch.Tensor, n: int, m: int) -> None:
    """Every full M x M tile keeps exactly n per row and column (checked tile by tile, plainly)."""
    for _, _, block in tiles_of(mask, m):
        if block.shape == (m, m):
            assert (block.sum(1) == n).all() and (block.sum(0) == n).all()


@pytest.fixture(scope="session")
def patterns_2_4() -> np.ndarray:
    return brute_tiles(2, 4)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def runnable(*methods: str) -> list:
    """``methods`` as pytest parameters, ``cyclecancel`` skipped where its C source cannot be compiled
    (``exact`` then uses OR-Tools, which the other parameters cover)."""
    from compressor.solvers import cyclecancel

    skip = pytest.mark.skipif(not cyclecancel.available(), reason=f"no compiled solver: {cyclecancel.unavailable_reason()}")
    return [pytest.param(m, marks=skip) if m == "cyclecancel" else m for m in methods]
