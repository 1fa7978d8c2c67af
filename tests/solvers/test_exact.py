"""Exact transposable solvers against brute force (2:4), scipy MILP (8x8, 6x6, 16x16 tiles) and each
other (the compiled cycle-cancelling solver against OR-Tools' min-cost flow on the same integer keys)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.solvers import is_transposable_nm, kept_magnitude, transposable_nm_mask, transposable_nm_solve
from compressor.solvers.enumerate import enumerate_tiles
from compressor.solvers import cyclecancel
from compressor.solvers.cyclecancel import cyclecancel_tiles
from compressor.solvers.mincostflow import mincostflow_tiles, problem_keys
from compressor.solvers.registry import resolve_solver
from compressor.solvers.tiles import make_problem

from .conftest import assert_exact_transposable, milp_tile, runnable

EXACT = ("exact", "enumerate", "cyclecancel", "mincostflow")
needs_compiler = pytest.mark.skipif(not cyclecancel.available(), reason=f"{cyclecancel.unavailable_reason()}")


def _tiles_to_matrix(tiles: np.ndarray) -> torch.Tensor:
    """Stack (K, 4, 4) tiles side by side along the columns: a (4, 4K) matrix."""
    return torch.from_numpy(np.concatenate(list(tiles), axis=1))


@pytest.mark.parametrize("method", runnable(*EXACT))
def test_every_2_4_pattern_is_recovered(method, patterns_2_4):
    # A tile that is large exactly on pattern p has p as its unique optimum.
    assert len(patterns_2_4) == 90
    rng = np.random.default_rng(0)
    weights = np.where(patterns_2_4, 10.0, 1.0) + rng.uniform(0, 0.5, patterns_2_4.shape)
    signs = rng.choice([-1.0, 1.0], patterns_2_4.shape)
    w = _tiles_to_matrix(weights * signs).float()  # (4, 360)
    mask = transposable_nm_mask(w, 2, 4, method=method)
    assert torch.equal(mask, _tiles_to_matrix(patterns_2_4))


@pytest.mark.parametrize("method", runnable(*EXACT))
def test_random_2_4_tiles_match_brute_force(method, patterns_2_4):
    rng = np.random.default_rng(1)
    tiles = rng.standard_normal((200, 4, 4))
    w = _tiles_to_matrix(tiles)  # float64
    mask = transposable_nm_mask(w, 2, 4, method=method).numpy()
    for k in range(200):
        got = mask[:, 4 * k : 4 * k + 4]
        best = (np.abs(tiles[k])[None] * patterns_2_4).sum((1, 2)).max()
        assert got.sum(0).tolist() == [2] * 4 and got.sum(1).tolist() == [2] * 4
        assert np.abs(tiles[k])[got].sum() == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("method", runnable("cyclecancel", "mincostflow"))
@pytest.mark.parametrize("n,m", [(4, 8), (2, 8), (3, 6), (8, 16)])
def test_flow_solvers_match_milp(n, m, method):
    rng = np.random.default_rng(n * 100 + m)
    count = 12 if m <= 8 else 3
    w = torch.from_numpy(rng.standard_normal((m, m * count)))
    mask = transposable_nm_mask(w, n, m, method=method).numpy()
    bound = n * m / 2**24  # documented relative precision of the integer costs
    for k in range(count):
        vals = np.abs(w.numpy()[:, m * k : m * (k + 1)])
        ref = milp_tile(vals, n)
        got = mask[:, m * k : m * (k + 1)]
        assert (got.sum(0) == n).all() and (got.sum(1) == n).all()
        assert vals[got].sum() >= vals[ref].sum() * (1 - bound) - 1e-12


def test_enumerate_and_mincostflow_agree_on_value():
    torch.manual_seed(3)
    w = torch.randn(64, 96)
    problem = make_problem(w, 2, 4)
    a = problem.to_matrix(enumerate_tiles(problem))
    b = problem.to_matrix(mincostflow_tiles(problem))
    assert kept_magnitude(w, a) == pytest.approx(kept_magnitude(w, b), rel=1e-6)


def test_tiles_are_m_rows_by_m_columns():
    # Weights large on a transposable block-diagonal layout: only a solver that tiles M rows x
    # M columns (not M*M consecutive weights of a row) keeps exactly the large entries.
    w = torch.full((8, 8), 0.1)
    big = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    for i0 in (0, 4):
        for j0 in (0, 4):
            w[i0 : i0 + 4, j0 : j0 + 4][big] = 5.0
    for method in EXACT if cyclecancel.available() else tuple(m for m in EXACT if m != "cyclecancel"):
        mask = transposable_nm_mask(w, 2, 4, method=method)
        assert torch.equal(mask, w > 1)


def test_workers_give_the_same_mask():
    torch.manual_seed(4)
    w = torch.randn(64, 128)
    from compressor.solvers.mincostflow import mincostflow_tiles as mcf

    problem = make_problem(w, 4, 8)
    one = mcf(problem, workers=1, chunk_arcs=64 * 16)
    two = mcf(problem, workers=2, chunk_arcs=64 * 16)
    assert torch.equal(one, two)
    assert_exact_transposable(problem.to_matrix(one), 4, 8)


@pytest.mark.parametrize("method", runnable(*EXACT, "greedy", "sinkhorn"))
def test_ties_and_constant_weights_are_deterministic(method):
    for w in (torch.ones(16, 24), torch.zeros(16, 24), torch.tensor([[1.0, -1.0] * 12] * 16)):
        a = transposable_nm_mask(w, 2, 4, method=method)
        b = transposable_nm_mask(w.clone(), 2, 4, method=method)
        assert torch.equal(a, b)
        assert is_transposable_nm(a, 2, 4) and is_transposable_nm(a.T, 2, 4)
        assert_exact_transposable(a, 2, 4)


def test_mask_dtype_device_shape():
    w = torch.randn(12, 20, dtype=torch.float16)
    mask, info = transposable_nm_solve(w, 2, 4)
    assert mask.dtype == torch.bool and mask.shape == w.shape and mask.device == w.device
    assert info["tiles"] == 15


def _key_sums(problem, tiles: torch.Tensor) -> np.ndarray:
    """Per tile, the integer keys both flow solvers maximise, summed over the kept entries."""
    return (problem_keys(problem) * tiles.numpy()).sum((1, 2))


@needs_compiler
@pytest.mark.parametrize("n,m,shape,rounded,with_prior", [
    (4, 8, (96, 160), False, False), (2, 8, (64, 64), False, True), (3, 6, (37, 45), False, True),
    (8, 16, (48, 64), False, False), (5, 16, (33, 70), True, False), (4, 8, (64, 96), True, True),
    (1, 4, (40, 40), True, False), (31, 32, (32, 64), False, False)])
def test_cyclecancel_keeps_the_optimum_of_mincostflow_on_every_tile(n, m, shape, rounded, with_prior):
    # the independent reference: OR-Tools' min-cost flow on the same integer keys; weights rounded
    # to a few values make many ties (equal keys, zero-gain exchanges), padding comes from shapes
    # that are not multiples of M, priors from a random existing mask
    rng = np.random.default_rng(n * 1000 + m + shape[0])
    w = rng.standard_normal(shape)
    if rounded:
        w = np.round(w * 2) / 2
    prior = torch.from_numpy(rng.random(shape) < 0.4) if with_prior else None
    problem = make_problem(torch.from_numpy(w), n, m, prior)
    ours = cyclecancel_tiles(problem)
    ref = mincostflow_tiles(problem)
    assert (ours.sum(1) == n).all() and (ours.sum(2) == n).all()
    assert np.array_equal(_key_sums(problem, ours), _key_sums(problem, ref))
    assert torch.equal(cyclecancel_tiles(problem, threads=2), ours)  # threads do not change the mask
    assert_exact_transposable(problem.to_matrix(ours), n, m)


@needs_compiler
def test_exact_uses_the_compiled_solver_and_falls_back_to_or_tools_without_it(monkeypatch):
    assert resolve_solver("exact", 4, 8) == "cyclecancel" and resolve_solver("exact", 2, 4) == "enumerate"
    assert resolve_solver("exact", 1, cyclecancel.MAX_M + 1) == "mincostflow"
    torch.manual_seed(6)
    w = torch.randn(32, 48)
    compiled = transposable_nm_mask(w, 4, 8)
    monkeypatch.setenv("COMPRESSOR_NATIVE", "0")
    monkeypatch.setattr(cyclecancel, "_LIBRARY", cyclecancel._LIBRARY.fresh())
    assert resolve_solver("exact", 4, 8) == "mincostflow"
    with pytest.raises(ValueError, match="COMPRESSOR_NATIVE=0.*'exact' or 'mincostflow'"):
        transposable_nm_mask(w, 4, 8, method="cyclecancel")
    fallback = transposable_nm_mask(w, 4, 8)
    assert kept_magnitude(w, fallback) == pytest.approx(kept_magnitude(w, compiled), rel=1e-6)
