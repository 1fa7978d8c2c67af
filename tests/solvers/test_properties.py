"""Property tests over random shapes and N:M (hypothesis; small example counts)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.solvers import is_nm, is_transposable_nm, kept_magnitude, nm_mask, transposable_nm_mask
from compressor.solvers.tiles import edge_tile_ok

from .conftest import tiles_of

NM = st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (2, 5), (5, 8)])
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _weights(seed: int, rows: int, cols: int, ties: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols))
    if ties:
        w = np.round(w)  # many equal magnitudes
    return torch.from_numpy(w).float()


@SETTINGS
@given(nm=NM, rows=st.integers(1, 20), cols=st.integers(1, 20), seed=st.integers(0, 2**16), ties=st.booleans())
def test_transposable_invariants(nm, rows, cols, seed, ties):
    n, m = nm
    w = _weights(seed, rows, cols, ties)
    opt = transposable_nm_mask(w, n, m, method="exact")
    for method in ("exact", "mincostflow", "greedy", "sinkhorn"):
        mask = transposable_nm_mask(w, n, m, method=method) if method != "exact" else opt
        assert mask.shape == w.shape and mask.dtype == torch.bool
        assert is_transposable_nm(mask, n, m) and is_transposable_nm(mask.T, n, m)
        for _, _, block in tiles_of(mask, m):
            assert edge_tile_ok(block, n, m)
            if block.shape == (m, m):
                assert (block.sum(0) == n).all() and (block.sum(1) == n).all()
        assert kept_magnitude(w, mask) <= kept_magnitude(w, opt) * (1 + 1e-5) + 1e-9
        assert torch.equal(mask, transposable_nm_mask(w.clone(), n, m, method=method))


@SETTINGS
@given(nm=NM, rows=st.integers(1, 12), cols=st.integers(1, 40), seed=st.integers(0, 2**16), ties=st.booleans())
def test_plain_nm_invariants(nm, rows, cols, seed, ties):
    n, m = nm
    w = _weights(seed, rows, cols, ties)
    mask = nm_mask(w, n, m)
    assert is_nm(mask, n, m)
    full = cols - cols % m
    for g0 in range(0, full, m):
        assert (mask[:, g0 : g0 + m].sum(1) == n).all()
        kept_min = torch.where(mask[:, g0 : g0 + m], w[:, g0 : g0 + m].abs(), torch.inf).amin(1)
        dropped_max = torch.where(mask[:, g0 : g0 + m], -torch.inf, w[:, g0 : g0 + m].abs()).amax(1)
        assert (kept_min >= dropped_max).all()
    if cols % m:
        assert (mask[:, full:].sum(1) == min(n, cols % m)).all()
