"""SparseLSTM / SparseGRU against nn.LSTM / nn.GRU (dense and with masked weights); step API."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from compressor.kernels import BlockSparseLinear, SparseGRU, SparseLSTM

CLASSES = {"lstm": (nn.LSTM, SparseLSTM, 4), "gru": (nn.GRU, SparseGRU, 3)}
IN, H = 13, 20  # not multiples of the 8x8 blocks: padding everywhere


def _all_masks(rnn, fn):
    return {n: fn(n, getattr(rnn, n)) for n in rnn._flat_weights_names if n.startswith("weight_")}


def _masked_copy(rnn, masks):
    ref = type(rnn)(rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, bias=rnn.bias,
                    batch_first=rnn.batch_first, bidirectional=rnn.bidirectional).double()
    ref.load_state_dict(rnn.state_dict())
    with torch.no_grad():
        for name, m in masks.items():
            getattr(ref, name).mul_(m)
    return ref


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers,bidir,batch_first", [(1, False, False), (2, True, True), (3, False, True), (2, True, False)])
@pytest.mark.parametrize("pruned", [False, True])
def test_matches_torch(kind, layers, bidir, batch_first, pruned, block_mask):
    base, sparse_cls, _ = CLASSES[kind]
    rnn = base(IN, H, num_layers=layers, bidirectional=bidir, batch_first=batch_first).double()
    if pruned:
        masks = _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5, balanced=("hh" in n), seed=len(n)))
    else:  # nothing pruned: all-True masks still run the sparse kernels
        masks = _all_masks(rnn, lambda n, w: torch.ones(w.shape, dtype=torch.bool))
    ref = _masked_copy(rnn, masks)
    mod = sparse_cls.from_dense(rnn, masks, block=(8, 8))
    assert all(isinstance(m, BlockSparseLinear) for m in mod.proj.values())
    B, T = 3, 6
    x = torch.randn((B, T, IN) if batch_first else (T, B, IN), dtype=torch.float64)
    D = 2 if bidir else 1
    h0 = torch.randn(layers * D, B, H, dtype=torch.float64)
    hx = (h0, torch.randn_like(h0)) if kind == "lstm" else h0
    with torch.no_grad():
        for args in ((x,), (x, hx)):
            want_out, want_h = ref(*args)
            got_out, got_h = mod(*args)
            assert_close(got_out, want_out)
            for g, w in zip(got_h if kind == "lstm" else (got_h,), want_h if kind == "lstm" else (want_h,)):
                assert_close(g, w)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_partial_masks_unbatched_and_float32(kind, block_mask):
    base, sparse_cls, _ = CLASSES[kind]
    rnn = base(IN, H, num_layers=2)
    masks = {"weight_hh_l1": block_mask(*rnn.weight_hh_l1.shape, 8, keep=0.25)}
    mod = sparse_cls.from_dense(rnn, masks, block=8)
    assert isinstance(mod.proj["hh_l1"], BlockSparseLinear) and isinstance(mod.proj["ih_l0"], nn.Linear)
    ref = _masked_copy(rnn, masks).float()
    x = torch.randn(5, IN)  # unbatched (T, in)
    with torch.no_grad():
        got, want = mod(x), ref(x)
    assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
    # round trip to a dense module
    dense = mod.to_dense()
    with torch.no_grad():
        assert_close(dense(x)[0], want[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_step_matches_forward(kind, block_mask):
    base, sparse_cls, _ = CLASSES[kind]
    rnn = base(IN, H, num_layers=2, batch_first=True).double()
    masks = _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5))
    mod = sparse_cls.from_dense(rnn, masks, block=8)
    x = torch.randn(2, 7, IN, dtype=torch.float64)
    with torch.no_grad():
        out, final = mod(x)
        state, ys = None, []
        for t in range(7):
            y, state = mod.step(x[:, t], state)
            ys.append(y)
    assert_close(torch.stack(ys, 1), out)
    for a, b in zip(state if kind == "lstm" else (state,), final if kind == "lstm" else (final,)):
        assert_close(a, b)


def test_gradients_flow_to_sparse_values(block_mask):
    rnn = nn.LSTM(IN, H).double()
    masks = _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5))
    mod = SparseLSTM.from_dense(rnn, masks, block=8)
    ref = _masked_copy(rnn, masks)
    x = torch.randn(4, 2, IN, dtype=torch.float64)
    mod(x)[0].sum().backward()
    ref(x)[0].sum().backward()
    hh = mod.proj["hh_l0"]
    with torch.no_grad():
        hh.values.copy_(hh.values.grad)
    assert_close(hh.to_dense_weight(), ref.weight_hh_l0.grad * masks["weight_hh_l0"])


def test_errors(block_mask):
    rnn = nn.LSTM(IN, H)
    with pytest.raises(TypeError, match="nn.GRU"):
        SparseGRU.from_dense(rnn)
    with pytest.raises(ValueError, match="unknown weight names"):
        SparseLSTM.from_dense(rnn, {"weight_hh_l3": torch.ones(80, 20, dtype=torch.bool)})
    with pytest.raises(ValueError, match="proj_size"):
        SparseLSTM.from_dense(nn.LSTM(IN, H, proj_size=5))
    bad = torch.ones(80, H, dtype=torch.bool)
    bad[0, 0] = False
    with pytest.raises(ValueError, match="whole 8x8 blocks"):
        SparseLSTM.from_dense(rnn, {"weight_hh_l0": bad}, block=8)
    bi = SparseLSTM.from_dense(nn.LSTM(IN, H, bidirectional=True))
    with pytest.raises(ValueError, match="unidirectional"):
        bi.step(torch.randn(1, IN))
    with pytest.raises(ValueError, match="input must be"):
        bi(torch.randn(2, 3, IN + 1))


# -- the native full-sequence kernel (kernels/native.py rnn_layer) ---------------------------------

def _torch_path(monkeypatch):
    """Rebuild the native state with COMPRESSOR_NATIVE=0: library() is None, the torch path runs."""
    from compressor.kernels import native

    monkeypatch.setenv("COMPRESSOR_NATIVE", "0")
    monkeypatch.setattr(native, "_LIBRARY", native._LIBRARY.fresh())
    assert native.library() is None and "COMPRESSOR_NATIVE=0" in native.unavailable_reason()


def _count_native(monkeypatch):
    from compressor.kernels import native

    calls = []
    real = native.rnn_layer
    monkeypatch.setattr(native, "rnn_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layout", ["balanced", "bsr"])
# 13 x 4 rows of 16-high float blocks: the six-at-a-time slices (input projection and, over 2+ steps, W_hh)
@pytest.mark.parametrize("B,T,block", [(1, 1, 8), (3, 7, 8), (1, 7, 8), (13, 4, 16)])
@pytest.mark.parametrize("bidir", [False, True])
def test_native_sequence_matches_torch_path_and_nn(kind, layout, B, T, block, bidir, block_mask, monkeypatch):
    from compressor.kernels import native

    assert native.library() is not None, native.unavailable_reason()  # CI machines have a C compiler
    base, sparse_cls, _ = CLASSES[kind]
    torch.manual_seed(B * 10 + T)
    rnn = base(IN, H, num_layers=2, bidirectional=bidir, batch_first=True)
    masks = _all_masks(rnn, lambda n, w: block_mask(*w.shape, block, keep=0.4, balanced=layout == "balanced",
                                                     seed=len(n) + 3 * ("reverse" in n)))
    ref = _masked_copy(rnn, masks).float()
    mod = sparse_cls.from_dense(rnn, masks, block=(block, block), layout=layout)
    assert {m.layout for m in mod.proj.values()} == {layout}
    D = 2 if bidir else 1
    x = torch.randn(B, T, IN)
    h0 = torch.randn(2 * D, B, H)
    hx = (h0, torch.randn_like(h0)) if kind == "lstm" else h0
    calls = _count_native(monkeypatch)
    real_linear, linear_calls = native.block_linear, []
    monkeypatch.setattr(native, "block_linear", lambda *a, **k: linear_calls.append(1) or real_linear(*a, **k))
    results = {}
    with torch.no_grad():
        for threads in (1, 2):  # one thread, and the block rows split over two
            monkeypatch.setattr(native, "RNN_THREADS", threads)
            results[threads] = [mod(x), mod(x, hx)]
    assert len(calls) == len(linear_calls) == 2 * 2 * 2 * D  # every layer and direction of every call ran natively
    want = [ref(x), ref(x, hx)]
    _torch_path(monkeypatch)
    with torch.no_grad():
        torch_path = [mod(x), mod(x, hx)]
    assert len(calls) == 2 * 2 * 2 * D  # no more native calls

    def flat(res):
        out, state = res
        return [out, *(state if kind == "lstm" else (state,))]

    for got_sets in (results[1], results[2], torch_path):
        for got, w in zip(got_sets, want):
            for g, e in zip(flat(got), flat(w)):
                assert_close(g, e, atol=2e-6, rtol=1e-5)
    for native_res, torch_res in zip(results[1], torch_path):
        for g, e in zip(flat(native_res), flat(torch_res)):
            assert_close(g, e, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_native_not_used_for_training_or_hooks(kind, block_mask, monkeypatch):
    base, sparse_cls, _ = CLASSES[kind]
    rnn = base(IN, H)
    mod = sparse_cls.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5)), block=8)
    calls = _count_native(monkeypatch)
    x = torch.randn(4, 2, IN)
    mod(x)[0].sum().backward()  # autograd: the torch path
    assert len(calls) == 0 and mod.proj["hh_l0"].values.grad is not None
    seen = []
    mod.proj["hh_l0"].register_forward_hook(lambda m, i, o: seen.append(1))
    with torch.no_grad():
        mod(x)  # a hook on the recurrent module: the torch path calls it every step
    assert len(calls) == 0 and len(seen) == 4


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bad_inputs_raise(kind, block_mask):
    base, sparse_cls, _ = CLASSES[kind]
    rnn = base(IN, H, num_layers=2, batch_first=True)
    mod = sparse_cls.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5)), block=8)
    h0 = torch.zeros(2, 3, H)
    hx = (h0, h0) if kind == "lstm" else h0
    with torch.no_grad():
        with pytest.raises(ValueError, match="empty sequence"):
            mod(torch.randn(3, 0, IN))
        with pytest.raises(ValueError, match="empty sequence"):
            mod(torch.randn(0, IN))  # unbatched, no steps
        with pytest.raises(ValueError, match="empty batch"):
            mod(torch.randn(0, 5, IN))
        with pytest.raises(ValueError, match="input must be"):
            mod(torch.randn(1, 3, 5, IN))  # rank 4
        # batch_first mismatch: (T=5, B=3) given to a batch_first model with a batch-3 state
        with pytest.raises(ValueError, match="hx must be"):
            mod(torch.randn(5, 3, IN), hx)
        mod(torch.randn(3, 5, IN), hx)  # the right layout runs
        with pytest.raises(ValueError, match="hx must be"):
            mod(torch.randn(5, IN), hx)  # unbatched input with a batched state
        if kind == "lstm":
            with pytest.raises(ValueError, match="pair"):
                mod(torch.randn(3, 5, IN), torch.zeros(2, 2, 3, H))  # a tensor, not (h, c)
        packed = nn.utils.rnn.pack_padded_sequence(torch.randn(3, 5, IN), [5, 4, 2], batch_first=True)
        with pytest.raises(ValueError, match="PackedSequence"):
            mod(packed)


def test_native_rnn_layer_checks_sizes():
    from compressor.kernels import native

    assert native.library() is not None, native.unavailable_reason()
    T, B, Hd, bw = 4, 2, 16, 8
    values = torch.randn(8 * 2, bw, 8)  # 8 block rows (4*16 / 8) x 2 kept blocks
    crow = torch.arange(9) * 2
    cols = torch.zeros(16, dtype=torch.int64)
    xp, h0 = torch.randn(T, B, 4 * Hd), torch.zeros(B, Hd)
    out, h, c = native.rnn_layer(xp, values, crow, cols, None, h0, h0, reverse=False)
    assert out.shape == (T, B, Hd) and torch.equal(out[-1], h)
    with pytest.raises(ValueError, match="not a BSR index"):
        native.rnn_layer(xp, values, crow, cols + 2, None, h0, h0, reverse=False)  # block column 2 of 2
    with pytest.raises(ValueError, match="do not fit"):
        native.rnn_layer(xp, values, crow, cols, None, torch.zeros(B + 1, Hd), h0, reverse=False)
    with pytest.raises(TypeError, match="fp32 or fp64"):
        native.rnn_layer(xp.double(), values, crow, cols, None, h0, h0, reverse=False)


def test_native_runs_for_the_torch_backend_that_swapped_models_record(block_mask, monkeypatch):
    rnn = nn.GRU(IN, H)
    mod = SparseGRU.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5)), block=8)
    for m in mod.proj.values():
        m.backend = "torch"  # what swap_kernels sets on a machine without CUDA
    calls = _count_native(monkeypatch)
    x = torch.randn(3, 2, IN)
    with torch.no_grad():
        got = mod(x)[0]
    assert len(calls) == 1
    assert_close(got, _masked_copy(rnn, {n: m.mask() for n, m in
                                         (("weight_" + k, v) for k, v in mod.proj.items())}).float()(x)[0],
                 atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_native_step_equals_the_torch_cell(kind, block_mask, monkeypatch):
    base, sparse_cls, _ = CLASSES[kind]
    rnn = base(IN, H, num_layers=2)
    mod = sparse_cls.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5)), block=8)
    x = torch.randn(3, IN)
    h0 = torch.randn(2, 3, H)
    state = (h0, torch.randn_like(h0)) if kind == "lstm" else h0
    calls = _count_native(monkeypatch)
    from compressor.kernels import native

    real_linear, linear_calls = native.block_linear, []
    monkeypatch.setattr(native, "block_linear", lambda *a, **k: linear_calls.append(1) or real_linear(*a, **k))
    with torch.no_grad():
        native_y, native_state = mod.step(x, state)
        assert len(calls) == 2 and len(linear_calls) == 2  # per layer: the input projection, the recurrence
        _torch_path(monkeypatch)
        torch_y, torch_state = mod.step(x, state)
    assert len(calls) == 2
    assert_close(native_y, torch_y, atol=2e-6, rtol=1e-5)
    for a, b in zip(native_state if kind == "lstm" else (native_state,), torch_state if kind == "lstm" else (torch_state,)):
        assert_close(a, b, atol=2e-6, rtol=1e-5)


def test_native_index_cache_follows_the_pattern_and_dense_inputs_keep_the_gemm(block_mask, monkeypatch):
    from compressor.kernels.rnn import _native_index, _native_input_projection

    lin = nn.Linear(IN, 32)
    mod = BlockSparseLinear.from_dense(lin, block_mask(32, IN, 8, keep=0.5), block=8)
    _, crow, cols = _native_index(mod)
    assert torch.equal(cols, mod.col_idx.reshape(-1)) and _native_index(mod)[2] is cols  # cached
    with torch.no_grad():
        mod.col_idx.copy_(mod.col_idx.flip(1))  # written in place: rebuilt
    assert torch.equal(_native_index(mod)[2], mod.col_idx.reshape(-1))
    x = torch.randn(200, IN)
    with torch.no_grad():  # half the blocks stored, 200 rows: the torch op's dense GEMM
        assert _native_input_projection(mod, x) is None
        assert_close(_native_input_projection(mod, x[:5]), mod(x[:5]), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_to_dense_keeps_eval_mode_and_from_projections_checks_sizes(kind, block_mask):
    # a 2-layer model with dropout: the dense copy of an eval module must not apply it (it was built training)
    base, cls, gates = CLASSES[kind]
    rnn = base(IN, H, num_layers=2, dropout=0.5, batch_first=True).eval()
    masks = _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5))
    sparse = cls.from_dense(rnn, masks, 8).eval()
    dense = sparse.to_dense()
    assert not dense.training
    x = torch.randn(2, 5, IN)
    with torch.no_grad():
        assert_close(dense(x)[0], _masked_copy(rnn, masks).float().eval()(x)[0])
    cells = dict(sparse.proj.items())
    rebuilt = cls.from_projections(rnn, cells).eval()  # the loader's way in: the projections as they are
    with torch.no_grad():
        assert torch.equal(rebuilt(x)[0], sparse(x)[0])
    with pytest.raises(ValueError, match=r"projections must be exactly"):
        cls.from_projections(rnn, {k: v for k, v in cells.items() if k != "hh_l1"})
    wrong = dict(cells, hh_l0=nn.Linear(H, gates * H + 1))
    with pytest.raises(ValueError, match=rf"projection hh_l0 must map {H} -> {gates * H} features with a bias"):
        cls.from_projections(rnn, wrong)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bh", [8, 12, 16, 32, 64])
def test_native_block_product_every_block_height_and_batch_against_dense(dtype, bh):
    """The block-row product under rnn_layer and block_linear groups examples by the vector
    registers a block height leaves (4, 3 or 2 at a time, remainders alone; 12 is the scalar path),
    and from 48 examples on takes heights of two-vector multiples slice by slice, six examples at a
    time: every batch size from 1 to 9 and 48 to 53 (each remainder of six) equals the dense
    product of the same blocks."""
    from compressor.kernels import native

    assert native.library() is not None, native.unavailable_reason()
    gen = torch.Generator().manual_seed(bh)
    bw, Ro, Ci = 8, 3, 5
    keep = torch.rand(Ro, Ci, generator=gen) < 0.6
    keep[:, 0] = True  # every block row has a block
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
    cols = keep.nonzero()[:, 1]
    values_t = torch.randn(len(cols), bw, bh, generator=gen, dtype=dtype)
    dense = torch.zeros(Ro * bh, Ci * bw, dtype=dtype)
    for p, (j, i) in enumerate(keep.nonzero().tolist()):
        dense[j * bh:(j + 1) * bh, i * bw:(i + 1) * bw] = values_t[p].T
    bias = torch.randn(Ro * bh, generator=gen, dtype=dtype)
    for B in [*range(1, 10), *range(48, 54)]:
        x = torch.randn(B, Ci * bw, generator=gen, dtype=dtype)
        got = native.block_linear(x, values_t, crow, cols, bias, Ci * bw, Ro * bh)
        assert_close(got, x @ dense.T + bias, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_plan_runs_tiling_layers_and_follows_their_weights(kind, dtype, block_mask, monkeypatch):
    """Sizes the 8x8 blocks tile exactly: the step runs through the native plan (built once, two C
    calls per layer); it equals the torch cell at batch 1 and 3, follows a weight written in place
    (the plan is rebuilt), takes strided inputs (a column of a sequence), and stays out of the way
    where autograd needs the general path."""
    import copy

    from compressor.kernels import native
    from compressor.kernels.rnn import _STEP_PLANS

    base, sparse_cls, _ = CLASSES[kind]
    torch.manual_seed(5)
    rnn = base(16, 24, num_layers=2)
    mod = sparse_cls.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5, seed=len(n))),
                                block=8).to(dtype)
    runs = []
    real_run = native.StepPlan.run
    monkeypatch.setattr(native.StepPlan, "run", lambda self, *a: runs.append(real_run(self, *a)) or runs[-1])

    def state_for(B):
        h0 = torch.randn(2, B, 24, dtype=dtype)
        return (h0, torch.randn_like(h0)) if kind == "lstm" else h0

    def flat(y, s):
        return [y, *(s if kind == "lstm" else (s,))]

    cases = [(torch.randn(B, 16, dtype=dtype), state_for(B)) for B in (1, 3)]
    with torch.no_grad():
        planned = [flat(*mod.step(x, s)) for x, s in cases]
        assert len(runs) == 2 and all(r is not None for r in runs) and _STEP_PLANS[mod][1] is not None
        copy.deepcopy(mod)  # the plan (C pointers) lives beside the module, not in it
        mod.proj["hh_l1"].values.mul_(0.5)  # in place: same address, new version
        changed = [flat(*mod.step(x, s)) for x, s in cases]
        _torch_path(monkeypatch)
        want_changed = [flat(*mod.step(x, s)) for x, s in cases]
        mod.proj["hh_l1"].values.mul_(2.0)
        want = [flat(*mod.step(x, s)) for x, s in cases]
    tol = dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    for got_all, want_all in ((planned, want), (changed, want_changed)):
        for got, w in zip(got_all, want_all):
            for g, e in zip(got, w):
                assert_close(g, e, **tol)
    assert not torch.allclose(changed[0][0], planned[0][0])  # the change reached the output
    monkeypatch.undo()  # native again
    native._LIBRARY.reset()
    runs.clear()
    monkeypatch.setattr(native.StepPlan, "run", lambda self, *a: runs.append(real_run(self, *a)) or runs[-1])
    x, s = cases[1]
    y, _ = mod.step(x, s)  # grad enabled, weights require grad: the torch path, which autograd follows
    assert y.requires_grad and runs == []
    with torch.no_grad():
        strided = (s[0].transpose(0, 1).contiguous().transpose(0, 1), s[1]) if kind == "lstm" else \
            s.transpose(0, 1).contiguous().transpose(0, 1)
        column = torch.stack([x, x], dim=1)[:, 0]  # x[:, t] of a (B, T, in) sequence: strided
        assert not strided[0 if kind == "lstm" else slice(None)].is_contiguous() and not column.is_contiguous()
        got = flat(*mod.step(column, strided))
    assert len(runs) == 1 and runs[0] is not None  # the plan ran them
    for g, e in zip(got, planned[1]):
        assert_close(g, e, **tol)


def test_step_plan_refuses_projections_of_other_widths_and_meta_weights(block_mask):
    """A projection swapped in by hand with another input width: no plan (the C code would read past
    the hidden state), and the general path raises rather than read; weights on the meta device
    step through torch (no index to check)."""
    from compressor.kernels import BlockSparseLinear
    from compressor.kernels.rnn import _STEP_PLANS

    rnn = nn.LSTM(16, 24, num_layers=2)
    mod = SparseLSTM.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5)), block=8)
    wide = nn.Linear(48, 96)
    mod.proj["ih_l1"] = BlockSparseLinear.from_dense(wide, block_mask(96, 48, 8, keep=0.5), block=8)
    x = torch.randn(1, 16)
    with torch.no_grad(), pytest.raises(ValueError, match="x must have last dimension 48, got shape"):
        mod.step(x)
    assert _STEP_PLANS[mod][1] is None
    meta = SparseLSTM.from_dense(rnn, _all_masks(rnn, lambda n, w: block_mask(*w.shape, 8, keep=0.5)), block=8).to("meta")
    with torch.no_grad():
        y, (h, c) = meta.step(torch.randn(1, 16, device="meta"))
    assert y.shape == (1, 24) and h.shape == c.shape == (2, 1, 24) and meta not in _STEP_PLANS
