"""Every sparse module exports with torch.onnx.export(dynamo=True) as standard ops; ORT agrees with torch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.kernels import (BlockSparseLinear, GatedBlockLinear, NMLinear, SparseGRU, SparseLSTM, export_onnx,
                                flatten_outputs, onnx_check, ort_session)

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


# The fresh process only opens sessions: the graph, its input and the dense reference output are
# made here (exporting in the child would pay the exporter's start-up again).
_SHARED_POOL_SCRIPT = r"""
import os, sys
import numpy as np
from compressor.kernels.onnx_check import ort_session, use_global_ort_threads

path, x_path, want_path = sys.argv[1:]
use_global_ort_threads(2)
first = ort_session(path, shared_pool=True)
threads = len(os.listdir("/proc/self/task"))
more = [ort_session(path, shared_pool=True) for _ in range(3)]
print("added", len(os.listdir("/proc/self/task")) - threads)
x, want = np.load(x_path), np.load(want_path)
for s in [first] + more:
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_sessions_on_the_shared_ort_pool_agree_with_torch_and_add_no_threads(tmp_path):
    """``use_global_ort_threads`` must come before the process's first ORT session: a fresh process."""
    lin = nn.Linear(64, 48)
    mask = torch.zeros(48, 64, dtype=torch.bool)
    for r in range(3):  # balanced 16x16 blocks: block row r keeps block columns r and r + 1 (2 of 4)
        for c in (r, r + 1):
            mask[16 * r:16 * (r + 1), 16 * c:16 * (c + 1)] = True
    path = export_onnx(BlockSparseLinear.from_dense(lin, mask, (16, 16)), (torch.randn(2, 64),), tmp_path / "m.onnx")
    x = torch.randn(2, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "want.npy", F.linear(x, lin.weight * mask, lin.bias).detach().numpy())
    out = subprocess.run([sys.executable, "-c", _SHARED_POOL_SCRIPT, path, str(tmp_path / "x.npy"),
                          str(tmp_path / "want.npy")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines() == ["added 0"]  # per-session pools would add a thread each


def _scan_nodes(path) -> int:
    import onnx

    return sum(n.op_type == "Scan" for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("cls,base,bidirectional,batch_first",
                         [(SparseLSTM, nn.LSTM, False, False), (SparseGRU, nn.GRU, True, True)])
def test_sparse_rnn_sequence_runs_in_one_scan_per_layer_and_direction(cls, base, bidirectional, batch_first,
                                                                        block_mask, tmp_path):
    """The full-sequence forward exports as ONNX Scan loops (no per-step copies of the cell), and ORT
    equals dense nn.LSTM / nn.GRU with the masked weights, outputs and final states."""
    torch.manual_seed(0)
    rnn = base(16, 24, num_layers=2, bidirectional=bidirectional, batch_first=batch_first).eval()
    masks = {n: block_mask(*p.shape, 8, keep=0.5) for n, p in rnn.named_parameters() if n.startswith("weight_")}
    mod = cls.from_dense(rnn, masks, block=8).eval()
    with torch.no_grad():
        for n, p in rnn.named_parameters():  # the dense reference: nn.LSTM / nn.GRU with the masked weights
            if n in masks:
                p.mul_(masks[n])
    T, B = 9, 3
    x = torch.randn(B, T, 16) if batch_first else torch.randn(T, B, 16)
    h0 = torch.randn(2 * (1 + bidirectional), B, 24)
    state = (h0, torch.randn_like(h0)) if cls is SparseLSTM else h0
    path = export_onnx(mod, (x, state), tmp_path / "rnn.onnx")
    assert _scan_nodes(path) == 2 * (1 + bidirectional)
    sess = ort_session(path)
    feed = dict(zip([i.name for i in sess.get_inputs()], [t.numpy() for t in flatten_outputs((x, state))]))
    got = sess.run(None, feed)
    with torch.no_grad():
        expected = flatten_outputs(rnn(x, state))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=2e-5, rtol=1e-4)


def test_sparse_rnn_graph_does_not_grow_with_the_sequence(block_mask, tmp_path):
    rnn = nn.LSTM(16, 24)
    mod = SparseLSTM.from_dense(rnn, {"weight_hh_l0": block_mask(96, 24, 8, keep=0.5)}, block=8).eval()
    sizes = []
    for T in (4, 64):
        path = export_onnx(mod, (torch.randn(T, 2, 16),), tmp_path / f"t{T}.onnx")
        sizes.append(os.path.getsize(path))
        assert _scan_nodes(path) == 1
    assert abs(sizes[0] - sizes[1]) < 0.02 * sizes[0], sizes  # unrolled, 16x the steps was ~16x the nodes


def test_dense_lstm_stays_one_onnx_node_after_a_torch_export(tmp_path):
    """capture's torch.export earlier in the process must not turn the dense LSTM of a later ONNX
    export into one cell per time step (torch's dispatch cache did; export_onnx clears it)."""
    import onnx

    m = nn.LSTM(8, 16, batch_first=True).eval()
    x = (torch.randn(2, 12, 8),)
    torch.export.export(m, x, strict=False)
    path = export_onnx(m, x, tmp_path / "lstm.onnx", input_names=["x"], dynamic_axes={"x": {0: "batch", 1: "sequence"}})
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("LSTM") == 1 and "Sigmoid" not in ops, ops
    sess = ort_session(path)
    x2 = torch.randn(3, 20, 8)  # another batch and length: the sequence axis stayed dynamic
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"x": x2.numpy()})[0], m(x2)[0].numpy(), atol=1e-5)


def test_ort_errors_measure_each_run_against_torch_and_refuse_a_wrong_output_count(tmp_path):
    """The one check harness: errors are numpy's on ORT's outputs, a changed reference shows up, and
    a reference with another number of outputs is an error, not a partial comparison."""
    from compressor.kernels.onnx_check import OutputCountError, ort_errors

    lin = nn.Linear(6, 3).eval()
    x = [(torch.randn(2, 6),), (torch.randn(5, 6),)]
    path = export_onnx(lin, x[0], str(tmp_path / "lin.onnx"), input_names=["x"], output_names=["y"],
                       dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    sess = ort_session(path)
    with torch.no_grad():
        expected = [[lin(*xi)] for xi in x]
    a, r = ort_errors(sess, x, expected)
    assert a < 1e-5 and r < 1e-5
    shifted = [[expected[0][0]], [expected[1][0] + 0.5]]  # the second run's reference off by 0.5
    a, r = ort_errors(sess, x, shifted)
    scale = float(shifted[1][0].abs().max())
    assert a == pytest.approx(0.5, abs=1e-5) and r == pytest.approx(0.5 / scale, rel=1e-4)
    with pytest.raises(OutputCountError, match="returned 1 outputs, torch 2"):
        ort_errors(sess, x, [[expected[0][0], expected[0][0]]])
