"""The sequential calibration recorder: the rows it returns equal a brute-force recording through the
whole model at every stage, while a stack of blocks is run once per group of stages, not once per layer."""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor.calibration import SequentialRecorder, Stage, module_inputs


class Block(nn.Module):
    """Attention-like block: q, k and v read the same tensor; keyword ``bias``; a tuple output."""

    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h, bias=None):
        a = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / 4 + bias, -1) @ self.v(h)
        h = h + self.o(a)
        return (h + self.ff2(torch.relu(self.ff1(h))), "unused")


class Stacked(nn.Module):
    def __init__(self, d=8, depth=3, chained=True):
        super().__init__()
        self.emb, self.head = nn.Linear(5, d), nn.Linear(d, 3)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.chained = chained

    def forward(self, x):
        bias = torch.zeros(x.shape[1], x.shape[1])
        h = e = self.emb(x)
        for b in self.blocks:
            # not chained: every block reads the embedding (the recorder must notice and fall back)
            h = b(h if self.chained else e, bias=bias)[0] + (0 if self.chained else h)
        return self.head(h)


def _stages(model):
    paths = ["emb"] + [f"blocks.{i}.{n}" for i in range(len(model.blocks))
                       for n in ("q", "k", "v", "o", "ff1", "ff2")] + ["head"]
    return [Stage(p) for p in paths]


def _batches():
    return [(torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(s)),) for s in range(5)]


def _walk(chained):
    torch.manual_seed(0)
    model = Stacked(chained=chained).eval()
    stages = _stages(model)
    rec = SequentialRecorder(model, stages, iter(_batches()), rows=60)
    prune = torch.Generator().manual_seed(7)
    for stage in stages:
        got = rec.inputs(stage)
        # brute force: the whole model as it is now
        want = module_inputs(model, stage.module_path, iter(_batches()), rows=60)
        torch.testing.assert_close(got["weight"], want["weight"], rtol=1e-5, atol=1e-6)
        assert got["weight"].shape[0] == 60
        with torch.no_grad():  # "compress" the stage before the next one is recorded
            w = model.get_submodule(stage.module_path).weight
            w.mul_(torch.rand(w.shape, generator=prune) > 0.5)
    return rec


def test_block_by_block_rows_equal_the_whole_model_and_cost_is_linear_in_depth():
    rec = _walk(chained=True)
    assert any("block by block through 'blocks'" in n for n in rec.notes)
    # per block: one run for q, k and v (one input tensor), one each for o, ff1 and ff2, and one to
    # carry its outputs on (not after the last block: the head is recorded through the whole model)
    assert rec.block_forwards == 3 * 5 - 1


def test_blocks_that_do_not_chain_are_recorded_through_the_whole_model():
    rec = _walk(chained=False)
    assert rec.block_forwards == 0
    assert any("not block by block" in n and "first argument" in n for n in rec.notes)


def test_keyword_batches_and_a_stream_that_runs_out_are_replayed():
    """Batches are drawn once: a one-shot generator still feeds every stage, inside the stack and out."""
    torch.manual_seed(0)
    model = Stacked().eval()
    stages = _stages(model)
    rec = SequentialRecorder(model, stages, (b for b in _batches()[:2]), rows=1000)
    for stage in stages:
        assert rec.inputs(stage)["weight"].shape[0] == 2 * 4 * 6


def test_a_stage_recording_stops_each_batch_after_the_modules_it_needs():
    """The first batch runs the whole block (it shows which modules share the stage's input: q, k,
    v); every later batch stops at the first other module, so the feed-forward after an attention
    stage runs once, not once per batch, and the rows are still the whole model's."""
    torch.manual_seed(0)
    model = Stacked().eval()
    stages = _stages(model)
    rec = SequentialRecorder(model, stages, iter(_batches()), rows=10_000)
    calls = {"o": 0, "ff2": 0}
    for name in calls:
        model.blocks[1].get_submodule(name).register_forward_hook(
            lambda mod, args, out, n=name: calls.__setitem__(n, calls[n] + 1))
    seen = {}
    for stage in stages:
        before = dict(calls)
        got = rec.inputs(stage)
        seen[stage.module_path] = {n: calls[n] - before[n] for n in calls}
        if stage.module_path == "blocks.1.v":  # given when q was recorded: the whole model's rows
            want = module_inputs(model, "blocks.1.v", iter(_batches()), rows=10_000)
            torch.testing.assert_close(got["weight"], want["weight"])
            assert got["weight"].shape[0] == 5 * 4 * 6
    # q, k and v of block 1 in one recording: o and ff2 ran for the first of the 5 batches only
    assert seen["blocks.1.q"] == {"o": 1, "ff2": 1} and seen["blocks.1.k"] == seen["blocks.1.v"] == {"o": 0, "ff2": 0}
    assert seen["blocks.1.ff1"]["ff2"] == 1  # ff1's recording stops before ff2 after the first batch
    assert seen["blocks.1.ff2"]["ff2"] == 5  # the last module: every batch runs to it


class Routed(nn.Module):
    """A block that calls ``rare`` only for batches whose first value is positive (tokens routed to
    an expert), between two modules that always run."""

    def __init__(self, d):
        super().__init__()
        self.a, self.rare, self.b = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, h):
        h = self.a(h)
        if h[0, 0, 0] > 0:
            h = self.rare(h)
        return self.b(h)


def test_a_module_the_first_batch_does_not_call_still_gets_every_later_batchs_rows():
    """Block 0's first batch skips ``rare``, later ones call it: the recordings of that block run every
    batch whole (no early stop), so every stage's rows are still the whole model's."""
    torch.manual_seed(3)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Routed(8) for _ in range(2))

        def forward(self, x):
            for blk in self.blocks:
                x = blk(x)
            return x

    model = Model().eval()
    pool = [(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(s)),) for s in range(40)]
    with torch.no_grad():
        routed = [bool(model.blocks[0].a(x)[0, 0, 0] > 0) for (x,) in pool]
    # a batch that skips rare first, then batches that call it and batches that do not
    batches = [pool[routed.index(False)]] + [b for b, r in zip(pool, routed) if r][:4] + \
        [b for b, r in zip(pool, routed) if not r][1:4]
    paths = ["blocks.0.a", "blocks.0.rare", "blocks.0.b", "blocks.1.a", "blocks.1.b"]
    rec = SequentialRecorder(model, [Stage(p) for p in paths], iter(batches), rows=10_000)
    for p in paths:
        got = rec.inputs(Stage(p))
        want = module_inputs(model, p, iter(batches), rows=10_000)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got), p
        if p == "blocks.0.rare":
            assert got["weight"].shape[0] == 4 * 2 * 3  # the four routed batches
    assert any("block by block" in n for n in rec.notes)
