"""Pruned ONNX initializers stored as bitmask + kept values: smaller files, the same session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compressor.kernels import export_onnx, ort_session
from compressor.onnx_compact import compact_initializers


def _pruned_mlp(zeros: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 37)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_((torch.rand_like(layer.weight) >= zeros).float())
    return model


@pytest.mark.parametrize("zeros", [0.5, 0.9])
def test_compacted_graph_is_smaller_equal_and_folded_by_ort(tmp_path, zeros):
    import onnxruntime as ort

    model, x = _pruned_mlp(zeros), torch.randn(5, 64)
    path = export_onnx(model, (x,), tmp_path / "dense.onnx")
    graph = onnx.load(path)
    stats = compact_initializers(graph)
    onnx.save(graph, tmp_path / "compact.onnx")
    assert len(stats) == 2
    dense_bytes = sum(w.numel() * 4 for w in (model[0].weight, model[2].weight))
    stored = sum(s for _, s in stats.values())
    # bitmask (1/32 of fp32) + kept values
    assert stored == pytest.approx(dense_bytes * (1 - zeros) + dense_bytes / 32, rel=0.06)
    # the file shrinks by the weight bytes saved, less a few small nodes and constants
    saved = (tmp_path / "dense.onnx").stat().st_size - (tmp_path / "compact.onnx").stat().st_size
    assert dense_bytes - stored - 3000 < saved <= dense_bytes - stored
    expected = model(x).detach().numpy()
    for file in ("dense.onnx", "compact.onnx"):
        session = ort_session(tmp_path / file)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # ORT folds the unpacking ops into constants when the session is created: nothing of them runs
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "compact.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node}
    assert not ops & {"BitShift", "BitwiseAnd", "CumSum", "Where"}, ops


def test_dense_and_small_initializers_are_left_alone(tmp_path):
    model = _pruned_mlp(0.0)
    model_proto = onnx.load(export_onnx(model, (torch.randn(2, 64),), tmp_path / "m.onnx"))
    before = [i.name for i in model_proto.graph.initializer]
    assert compact_initializers(model_proto) == {}
    assert [i.name for i in model_proto.graph.initializer] == before
