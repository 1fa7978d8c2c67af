"""Every sparse module exports with torch.onnx.export(dynamo=True) as standard ops; ORT agrees with torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.kernels import BlockSparseLinear, GatedBlockLinear, NMLinear, SparseGRU, SparseLSTM, onnx_check

pytestmark = pytest.mark.filterwarnings("ignore")


def _ok(res, *expect_ops, atol=1e-5):
    assert res.custom_ops == (), res.custom_ops
    assert res.max_abs < atol, res
    for op in expect_ops:
        assert op in res.op_types, (op, res.op_types)


@pytest.mark.parametrize("layout,batch", [("balanced", 1), ("balanced", 4), ("bsr", 2)])
def test_block_sparse_linear(layout, batch, block_mask):
    lin = nn.Linear(70, 45)
    mask = block_mask(45, 70, (8, 16), keep=0.4, balanced=(layout == "balanced"))
    mod = BlockSparseLinear.from_dense(lin, mask, (8, 16), layout=layout)
    _ok(onnx_check(mod, (torch.randn(batch, 70),)), "Gather", "MatMul")


def test_nm_linear(nm_mask):
    lin = nn.Linear(30, 12)
    mod = NMLinear.from_dense(lin, nm_mask(lin.weight.detach(), 2, 4), 2, 4)
    _ok(onnx_check(mod, (torch.randn(2, 30),)))


@pytest.mark.parametrize("mode", ["global", "row"])
def test_gated_block_linear(mode):
    mod = GatedBlockLinear.from_dense(nn.Linear(70, 45), (16, 32), 0.5, mode)
    _ok(onnx_check(mod, (torch.randn(3, 70),)), "TopK", "MatMul")


def test_sparse_lstm_step(block_mask):
    rnn = nn.LSTM(13, 20, num_layers=2)
    masks = {n: block_mask(*getattr(rnn, n).shape, 8, keep=0.5) for n in ("weight_ih_l0", "weight_hh_l0", "weight_hh_l1")}
    mod = SparseLSTM.from_dense(rnn, masks, block=8).step_module()
    _ok(onnx_check(mod, (torch.randn(1, 13), torch.randn(2, 1, 20), torch.randn(2, 1, 20))), "Sigmoid", "Tanh")


def test_sparse_gru_step(block_mask):
    rnn = nn.GRU(13, 20)
    masks = {"weight_hh_l0": block_mask(60, 20, 8, keep=0.5)}
    mod = SparseGRU.from_dense(rnn, masks, block=8).step_module()
    _ok(onnx_check(mod, (torch.randn(2, 13), torch.randn(1, 2, 20))))


def test_check_detects_disagreement():
    """onnx_check must be able to fail: a module whose eager output differs from its export."""

    class Sneaky(nn.Module):
        def forward(self, x):
            return x * (2.0 if torch.compiler.is_exporting() else 1.0)

    res = onnx_check(Sneaky(), (torch.randn(2, 3),))
    assert res.max_abs > 0.1
