"""Exact mask invariants of every one-shot pattern, checked against brute-force references."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import compressor
from compressor.errors import RecipeError
from compressor.loading import ModelSpec
from compressor.masks import finalize, get_mask, set_mask
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())


def run(model, passes, example=None):
    spec = ModelSpec(model.eval(), example, {"kind": "factory", "ref": "x:y"})
    recipe = parse_recipe({"version": 1, "passes": passes})
    return compressor.Pipeline(recipe).run(spec, console=QUIET)


def brute_block_scores(w, bh, bw, score):
    """Loop over blocks one by one (independent of the vectorised solver)."""
    rows, cols = w.shape
    out = torch.zeros(math.ceil(rows / bh), math.ceil(cols / bw), dtype=torch.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            blk = w[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw].abs().double()
            out[i, j] = {"max_abs": blk.max(), "mean_abs": blk.mean(), "l2": blk.pow(2).sum().sqrt()}[score]
    return out


@pytest.mark.parametrize("shape,block", [((48, 40), (8, 8)), ((50, 37), (8, 4)), ((7, 5), (16, 2))])
@pytest.mark.parametrize("score", ["max_abs", "mean_abs", "l2"])
def test_block_prune_keeps_the_top_blocks(shape, block, score):
    lin = nn.Linear(shape[1], shape[0])
    w0 = lin.weight.detach().clone()
    out = run(nn.Sequential(lin), [{"pass": "block_prune", "block": list(block), "sparsity": 0.6, "score": score}])
    w = out.model[0].weight.detach()
    scores = brute_block_scores(w0, *block, score)
    n_blocks = scores.numel()
    keep = max(1, round(0.4 * n_blocks))
    kept_scores = sorted(scores.flatten().tolist(), reverse=True)[:keep]
    bh, bw = block
    kept = []
    for i, j in itertools.product(range(scores.shape[0]), range(scores.shape[1])):
        blk = w[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw]
        orig = w0[i * bh:(i + 1) * bh, j * bw:(j + 1) * bw]
        # every block is kept whole or removed whole
        assert torch.equal(blk, orig) or bool((blk == 0).all())
        if torch.equal(blk, orig):
            kept.append(scores[i, j].item())
    assert len(kept) == keep
    assert sorted(kept, reverse=True) == pytest.approx(kept_scores)


def test_a_block_covering_the_whole_layer_is_refused_before_any_change():
    """One block over the whole matrix could only be kept or removed whole (the report then said
    30% asked, 0% measured): refused with the recipe path, the weights untouched."""
    lin = nn.Linear(5, 7)
    before = lin.weight.detach().clone()
    with pytest.raises(RecipeError, match=r"covers all of layer 0\.weight \(7 x 5\)") as info:
        run(nn.Sequential(lin), [{"pass": "block_prune", "block": [16, 16], "sparsity": 0.3}])
    assert info.value.path == "passes[0].block"
    assert torch.equal(lin.weight, before)


def test_balanced_block_keeps_the_same_count_per_block_row():
    lin = nn.Linear(64, 96)
    w0 = lin.weight.detach().clone()
    out = run(nn.Sequential(lin), [{"pass": "block_prune", "block": [16, 8], "sparsity": 0.75, "balanced": True}])
    w = out.model[0].weight.detach()
    scores = brute_block_scores(w0, 16, 8, "max_abs")
    for i in range(scores.shape[0]):
        row = w[i * 16:(i + 1) * 16].reshape(16, 8, 8)  # (bh, C, bw)
        kept = [j for j in range(8) if bool((row[:, j] != 0).any())]
        assert len(kept) == 2  # round(0.25 * 8)
        assert sorted(kept) == sorted(scores[i].argsort(descending=True)[:2].tolist())
    assert out.report.layers[0].pattern == "balanced block 16x8"
    assert out.report.layers[0].sparsity == pytest.approx(0.75)


def test_blocks_stay_inside_lstm_gates():
    lstm = nn.LSTM(24, 12, 1)  # hidden 12 is not a multiple of the 8-row block
    model = nn.Sequential()
    model.rnn = lstm
    out = run(model, [{"pass": "block_prune", "block": [8, 8], "sparsity": 0.5}])
    w = out.model.rnn.weight_hh_l0.detach()
    w_ih = out.model.rnn.weight_ih_l0.detach()
    for gate in range(4):
        for mat in (w, w_ih):
            g = mat[gate * 12:(gate + 1) * 12]
            # within a gate, rows 0-7 form one block row and rows 8-11 another: each block is whole
            for r0, r1 in ((0, 8), (8, 12)):
                for c0 in range(0, mat.shape[1], 8):
                    blk = g[r0:r1, c0:c0 + 8]
                    assert bool((blk == 0).all()) or bool((blk != 0).all())
    row = out.report.layers[1]
    assert set(row.gate_sparsity) == {"i", "f", "g", "o"}


@pytest.mark.parametrize("n,m,cols", [(2, 4, 16), (1, 4, 18), (4, 8, 21), (3, 5, 10)])
def test_nm_prune_keeps_n_largest_per_group(n, m, cols):
    lin = nn.Linear(cols, 9)
    w0 = lin.weight.detach().clone()
    out = run(nn.Sequential(lin), [{"pass": "nm_prune", "n": n, "m": m}])
    w = out.model[0].weight.detach()
    for r in range(w.shape[0]):
        for g0 in range(0, cols, m):
            group = w0[r, g0:g0 + m].abs()
            keep = min(n, group.numel())
            expected = set(group.argsort(descending=True)[:keep].tolist())
            got = {i for i in range(group.numel()) if w[r, g0 + i] != 0}
            assert got == expected


def test_nm_prune_skips_layers_narrower_than_m_and_says_so():
    model = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 4))
    out = run(model, [{"pass": "nm_prune", "n": 2, "m": 4}])
    first, second = out.report.layers
    assert first.pattern == "dense" and first.sparsity == 0.0
    assert any("m=4" in note for note in first.notes)
    assert second.pattern == "2:4" and second.sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("ranking", ["layer", "global"])
def test_unstructured_prune_exact_counts(ranking):
    model = nn.Sequential(nn.Linear(30, 40), nn.Linear(40, 10))
    with torch.no_grad():
        model[1].weight.mul_(10)  # the second layer dominates a global ranking
    w0 = [model[0].weight.detach().clone(), model[1].weight.detach().clone()]
    out = run(model, [{"pass": "unstructured_prune", "sparsity": 0.8, "ranking": ranking}])
    zeros = [int((out.model[i].weight == 0).sum()) for i in range(2)]
    if ranking == "layer":
        assert zeros == [round(0.8 * 1200), round(0.8 * 400)]
    else:
        allw = torch.cat([w.abs().flatten() for w in w0])
        keep = round(0.2 * allw.numel())
        threshold = allw.sort(descending=True).values[keep - 1]
        expected = [int((w.abs() < threshold).sum()) for w in w0]
        assert zeros == expected
        assert sum(zeros) == 1600 - keep


def test_mask_blocks_regrowth_under_momentum():
    lin = nn.Linear(8, 8)
    mask = torch.rand(8, 8) > 0.5
    set_mask(lin, "weight", mask)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        loss = lin(torch.randn(4, 8)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bool((lin.weight[~mask] == 0).all())
    masks = finalize(lin)
    assert torch.equal(masks["weight"], mask)
    assert isinstance(lin.weight, nn.Parameter) and get_mask(lin, "weight") is None
    assert bool((lin.weight[~mask] == 0).all())


def test_later_pass_never_regrows_an_earlier_mask():
    lin = nn.Linear(32, 16)
    out = run(nn.Sequential(lin), [
        {"pass": "block_prune", "block": [4, 4], "sparsity": 0.5},
        {"pass": "nm_prune", "n": 2, "m": 4},
    ])
    w = out.model[0].weight
    assert float((w == 0).float().mean()) >= 0.75 - 1e-6  # 2:4 inside the surviving blocks
    assert out.report.layers[0].passes == ["block_prune", "nm_prune"]


def test_block_prune_global_balanced_shares_one_budget():
    model = nn.Sequential(nn.Linear(32, 24), nn.Linear(24, 24))
    with torch.no_grad():
        model[1].weight.mul_(3)  # the second layer's blocks outrank the first's
    w0 = [model[i].weight.detach().clone() for i in range(2)]
    out = run(model, [{"pass": "block_prune", "block": [4, 4], "sparsity": 0.75, "ranking": "global", "balanced": True}])
    scores = [brute_block_scores(w, 4, 4, "max_abs") for w in w0]
    budget = round(0.25 * sum(s.numel() for s in scores))
    counts = []
    for i, s in enumerate(scores):
        kept = reduce_blocks(out.model[i].weight != 0, 4)
        per_row = kept.sum(dim=1)
        assert bool((per_row == per_row[0]).all())  # balanced: every block row keeps as many
        k = int(per_row[0])
        expected = torch.zeros_like(kept)
        expected.scatter_(1, s.argsort(dim=1, descending=True, stable=True)[:, :k], True)
        assert torch.equal(kept, expected)  # the top-k blocks of every row
        counts.append(k)
    # both layers have 6 block rows: the best counts are the top columns of row-sorted score means
    means = sorted(((float(m), i) for i, s in enumerate(scores)
                    for m in s.sort(dim=1, descending=True).values.mean(dim=0)[1:]), reverse=True)
    extra = (budget - 12) // 6
    assert counts == [1 + sum(1 for _, i in means[:extra] if i == layer) for layer in range(2)]
    assert sum(6 * k for k in counts) <= budget
    assert [r.sparsity for r in out.report.layers] != [0.75, 0.75]


def reduce_blocks(nonzero, b):
    r, c = nonzero.shape
    return nonzero.reshape(r // b, b, c // b, b).any(dim=3).any(dim=1)
