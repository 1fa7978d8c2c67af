"""Sparse formats, pure-torch sparse ops and the nn.Modules that use them.

Formats (:mod:`.formats`): :class:`BalancedBlock`, :class:`BSR`, :class:`NMPacked`.
Ops: :func:`balanced_block_linear`, :func:`bsr_linear` (:mod:`.block_ops`), :func:`nm_linear`
(:mod:`.nm_ops`), :func:`gated_block_linear` with :func:`select_blocks` (:mod:`.gated_ops`).
Modules: :class:`BlockSparseLinear`, :class:`NMLinear`, :class:`GatedBlockLinear`
(:mod:`.modules`), :class:`SparseLSTM`, :class:`SparseGRU` (:mod:`.rnn`), :class:`GatedLSTM`,
:class:`GatedGRU`, :func:`gated_linear`, :func:`build_gate` (:mod:`.gated_rnn`).
ONNX: :func:`onnx_check` (:mod:`.onnx_check`).
CPU native: gated layers' inference runs a small C kernel compiled on first use (:mod:`.native`;
falls back to the torch ops without a C compiler or with ``COMPRESSOR_NATIVE=0``).
Backends: :class:`Backend` ``auto | torch | triton | native`` (:mod:`.backends`; dispatch in
:func:`resolve_backend`, :mod:`.triton_common`, and the modules' ``forward``). GPU: Triton
kernels registered as custom ops ``compressor::block_sparse_mm`` (:mod:`.triton_block`) and
``compressor::gated_block_gemv`` (:mod:`.triton_gated`), imported on first use so that
``import compressor.kernels`` does not import triton; 2:4 semi-structured on CUDA
(:mod:`.semi_structured`).

Papers: Narang et al. arXiv 1711.02782 (block sparsity), Hadifar et al. arXiv 2001.04686 (gated
blocks), Hubara et al. arXiv 2102.08124 (N:M); see ``docs/methods.md``.
"""

if __name__ == "kernels":
    # Imported under the bare name: the repository root is on sys.path (python -m pytest, python -m
    # compressor or torchrun -m compressor run from the root), so this folder, which is installed as
    # compressor.kernels, shadows Hugging Face's `kernels` package that transformers imports. Load the
    # real one from sys.path without the root and put it in sys.modules: the import system returns
    # sys.modules["kernels"], not this module, once this body ends.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    _paths = [p for p in sys.path if os.path.realpath(p or ".") != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _paths)
    if _spec is None or _spec.origin is None:  # origin None: a bare namespace folder (e.g. tests/kernels)
        raise ModuleNotFoundError(
            f"{os.path.dirname(__file__)} is compressor.kernels and must be imported as compressor.kernels; "
            "no other 'kernels' package is installed", name="kernels")
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _real
    _spec.loader.exec_module(_real)
else:
    from compressor.kernels._checks import SUPPORTED_DTYPES
    from compressor.kernels.backends import BACKENDS, Backend, check_backend
    from compressor.kernels.block_ops import balanced_block_linear, bsr_linear
    from compressor.kernels.formats import BSR, BalancedBlock, NMPacked, block_mask_grid, is_balanced
    from compressor.kernels.gated_ops import gate_values, gated_block_linear, kept_blocks, select_blocks
    from compressor.kernels.modules import BlockSparseLinear, GatedBlockLinear, NMLinear
    from compressor.kernels.nm_ops import nm_linear
    from compressor.kernels.onnx_check import OnnxCheck, export_onnx, flatten_outputs, onnx_check, ort_session, output_names
    from compressor.kernels.rnn import PRODUCT_ORDERS, RNNStep, SparseGRU, SparseLSTM
    from compressor.kernels.semi_structured import SemiStructuredWeight, is_transposable_2to4
    from compressor.kernels.triton_common import TritonUnavailableError, resolve_backend
    from compressor.kernels.gated_rnn import GATE_INITS, GatedGRU, GatedLinear, GatedLSTM, LowRankGate, build_gate, gate_macs, gated_linear

__all__ = [
    "SUPPORTED_DTYPES",
    "BalancedBlock",
    "BSR",
    "NMPacked",
    "block_mask_grid",
    "is_balanced",
    "balanced_block_linear",
    "bsr_linear",
    "nm_linear",
    "gate_values",
    "select_blocks",
    "kept_blocks",
    "gated_block_linear",
    "BlockSparseLinear",
    "NMLinear",
    "GatedBlockLinear",
    "SparseLSTM",
    "SparseGRU",
    "RNNStep",
    "PRODUCT_ORDERS",
    "GatedLinear",
    "GatedLSTM",
    "GatedGRU",
    "LowRankGate",
    "build_gate",
    "gate_macs",
    "gated_linear",
    "GATE_INITS",
    "OnnxCheck",
    "flatten_outputs",
    "output_names",
    "export_onnx",
    "onnx_check",
    "ort_session",
    "Backend",
    "BACKENDS",
    "check_backend",
    "resolve_backend",
    "TritonUnavailableError",
    "SemiStructuredWeight",
    "is_transposable_2to4",
]
