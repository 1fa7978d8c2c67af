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
