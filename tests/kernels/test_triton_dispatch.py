"""Backend dispatch rules, the 2:4 wrapper on CPU, swap_kernels' backend and the GPU bench's CPU message."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.kernels import NMLinear
from compressor.kernels.semi_structured import is_transposable_2to4, semi_structured_unavailable_reason
from compressor.kernels.triton_common import TritonUnavailableError, block_supported, resolve_backend
from compressor.passes.swap_kernels import SwapKernelsConfig, _backend

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def test_block_supported():
    assert block_supported(16, 32, 64) and not block_supported(8) and not block_supported(48)


@no_cuda
def test_resolve_backend_on_cpu(monkeypatch):
    x = torch.randn(2, 3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("auto", x) == "torch" and resolve_backend("torch", x) == "torch"
    assert resolve_backend("native", x) == "torch"  # the ops have no compiled path: the modules pick it
    with pytest.raises(TritonUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", x)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'triton', 'native'\)"):
        resolve_backend("gpu", x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    assert resolve_backend("triton", x) == "triton"
    assert resolve_backend("auto", x) == "torch"  # auto never picks the interpreter
    assert resolve_backend("native", x) == "torch"  # native never picks Triton, even where it can run
    with pytest.raises(ValueError, match="powers of two"):
        resolve_backend("triton", x, supported=False)


@no_cuda
def test_swap_kernels_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _backend(SwapKernelsConfig(backend="auto")) == "torch"
    from compressor.kernels import native

    monkeypatch.setattr(native, "unavailable_reason", lambda: None)
    assert _backend(SwapKernelsConfig(backend="native")) == "native"
    monkeypatch.setattr(native, "unavailable_reason", lambda: "no C compiler found (cc)")
    with pytest.raises(CompressorError, match="backend 'native' cannot run here: no C compiler found"):
        _backend(SwapKernelsConfig(backend="native"))
    with pytest.raises(CompressorError, match="triton.*TRITON_INTERPRET=1"):
        _backend(SwapKernelsConfig(backend="triton"))
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend(SwapKernelsConfig(backend="triton")) == "triton"


@no_cuda
def test_nm_linear_stays_on_torch_without_cuda(nm_mask, dense_ref):
    lin = nn.Linear(64, 32).to(torch.bfloat16)
    mask = nm_mask(lin.weight.detach(), 2, 4)
    mod = NMLinear.from_dense(lin, mask, 2, 4)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        assert "CUDA only" in mod.semi_structured_reason(x)
        mod.backend = "native"  # never the 2:4 GPU tensors: said before the device is looked at
        assert mod.semi_structured_reason(x) == "backend is 'native'"
        mod.backend = "auto"
        y = mod(x)
    torch.testing.assert_close(y.float(), dense_ref(x, lin.weight, mask, lin.bias).float(), rtol=2e-2, atol=2e-2)
    mod.backend = "bogus"
    with pytest.raises(ValueError, match="backend must be one of"):
        mod(x)


def test_semi_structured_reasons_and_transposable():
    assert "2:4 only" in semi_structured_unavailable_reason(4, 8, torch.float16, "cpu")
    assert "float16 or bfloat16" in semi_structured_unavailable_reason(2, 4, torch.float32, "cpu")
    tile = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert is_transposable_2to4(tile.repeat(2, 3))
    rows_only = torch.tensor([[1, 1, 0, 0]] * 4, dtype=torch.bool)  # 2:4 along rows, 4:4 along columns
    assert not is_transposable_2to4(rows_only)


@no_cuda
def test_bench_kernels_device_cuda_without_cuda_is_one_clear_line(capsys, tmp_path):
    from compressor.bench import kernels as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(["--device", "cuda", "--json", str(tmp_path / "x.json")])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err
    assert not (tmp_path / "x.json").exists()
