"""Sparse drop-in replacements for ``nn.Linear``: block-sparse, N:M and gated block linear.

* :class:`BlockSparseLinear` -- static block sparsity (Narang et al., arXiv 1711.02782) in the
  balanced block layout, or BSR when block rows keep very different numbers of blocks.
* :class:`NMLinear` -- packed N:M along the input dimension (Hubara et al., arXiv 2102.08124).
* :class:`GatedBlockLinear` -- per-example top-k of blocks chosen by a gate network
  (Hadifar et al., arXiv 2001.04686; docs/methods.md section 2).

Every module has a deterministic ``from_dense(...)`` classmethod (a loader can rebuild a swapped
module from the dense masked weight and its mask), ``to_dense_weight()`` and ``to_linear()`` to
turn it back, and exports to ONNX with standard ops. ``from_dense`` copies the weights; the
module's ``values`` are trainable ``nn.Parameter`` s.

Unbalanced masks in :class:`BlockSparseLinear` (``layout="auto"``): if padding every block row to
the largest row's block count adds at most ``MAX_PAD_OVERHEAD`` more stored blocks the balanced
layout is used with zero padding blocks (they point at block columns the row does not keep),
otherwise the BSR layout (embedding_bag below batch 4, per-block bmm above; no padding). On the
2-core development machine the BSR paths measured 25-50% slower than the balanced one on the same
blocks (4096x4096, batch 1 and 16), so padding pays while it adds less than that; see
``BENCHMARKS.md``.

Backends: every module has a ``backend`` attribute, a :class:`~compressor.kernels.backends.Backend`
(``auto`` by default, ``torch``, ``triton`` or ``native``; rules in :mod:`.backends` and
:mod:`compressor.kernels.triton_common`). ``auto`` runs the Triton kernels (:mod:`.triton_block`,
:mod:`.triton_gated`) when the input is on CUDA and the block sizes suit them, the pure-torch ops
otherwise, so CPU behaviour is unchanged. ``triton`` on a CPU tensor runs
only under ``TRITON_INTERPRET=1`` and is a clear error otherwise. :class:`NMLinear` has no Triton
kernel: on CUDA its ``auto``/``triton`` backends use torch's 2:4 semi-structured tensors
(:mod:`.semi_structured`) where the layer is 2:4 fp16/bf16 (for training too, forward and backward,
when the mask is transposable 2:4), the torch op otherwise.
:class:`GatedBlockLinear` applies ``backend`` when ``path="auto"``: ``auto`` and ``native`` run its
fused compiled forward for CPU inference (:func:`~compressor.kernels.native.gated_linear_fused`).
``native`` never takes Triton or the 2:4 GPU path; the modules here without a compiled kernel run
their torch ops under it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._checks import ceil_div, check_block, check_float_dtype, pad_to_blocks
from .block_ops import LARGE_BATCH_BSR, BagIndex, bag_index_bsr, balanced_block_linear, bsr_linear
from .formats import BSR, BalancedBlock, NMPacked, block_mask_grid
from .gated_ops import GATE_MODES, gate_values, gated_block_linear, kept_blocks, select_blocks
from .native import gated_linear_fused
from .nm_ops import nm_linear
from .semi_structured import (
    SemiStructuredWeight,
    semi_structured_linear_trainable,
    semi_structured_unavailable_reason,
)
from .backends import Backend, check_backend
from .triton_common import block_supported, resolve_backend

__all__ = ["BlockSparseLinear", "NMLinear", "GatedBlockLinear", "MAX_PAD_OVERHEAD"]

#: Largest relative growth of stored blocks for which an unbalanced mask is padded to balanced.
MAX_PAD_OVERHEAD = 0.25


def _check_linear(linear) -> None:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    check_float_dtype("linear.weight", linear.weight)


def _bias(bias: torch.Tensor | None) -> nn.Parameter | None:
    return None if bias is None else nn.Parameter(bias.detach().clone())


def _triton_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float16, torch.bfloat16)


class _SparseLinearBase(nn.Module):
    in_features: int
    out_features: int
    #: a :class:`Backend` or its name (see the module docstring); an instance attribute once built.
    backend: str = Backend.AUTO

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with the masked weight (exact round trip)."""
        w = self.to_dense_weight()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features}, got shape {tuple(x.shape)}")
        if x.dtype != self.values.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the module's weights are {self.values.dtype}")


class BlockSparseLinear(_SparseLinearBase):
    """``y = x @ (W * mask).T + b`` with a block-sparse ``W`` (balanced block or BSR layout).

    Build with :meth:`from_dense`. ``values`` holds the kept blocks in the kernel layout:
    balanced ``(R, k*bw, bh)``, BSR ``(nnzb, bw, bh)`` (each block transposed).
    """

    def __init__(self, fmt: BalancedBlock | BSR, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = fmt.shape
        self.block = fmt.block
        if isinstance(fmt, BalancedBlock):
            self.layout = "balanced"
            self.values = nn.Parameter(fmt.values_t())
            self.register_buffer("col_idx", fmt.col_idx.clone())
            self.register_buffer("row_nnz", fmt.row_nnz.clone())
        elif isinstance(fmt, BSR):
            self.layout = "bsr"
            self.values = nn.Parameter(fmt.values.transpose(1, 2).contiguous())  # (nnzb, bw, bh)
            self.register_buffer("crow_indices", fmt.crow_indices.clone())
            self.register_buffer("col_indices", fmt.col_indices.clone())
            self.register_buffer("row_indices", fmt.row_indices(), persistent=False)
        else:
            raise TypeError(f"fmt must be a BalancedBlock or BSR, got {type(fmt).__name__}")
        self.bias = _bias(bias)
        self.backend = Backend.AUTO
        self._bag_cache: tuple[tuple, BagIndex] | None = None

    def _bag_index(self) -> BagIndex:
        """The BSR embedding_bag index tensors, rebuilt only when the pattern buffers change (moved
        to another device, replaced, written in place or loaded by ``load_state_dict``)."""
        pattern = (self.crow_indices, self.col_indices)
        # Inference tensors have no version counter; loads clear the cache in _load_from_state_dict.
        key = tuple((t.data_ptr(), t.device, -1 if t.is_inference() else t._version) for t in pattern)
        if self._bag_cache is None or self._bag_cache[0] != key:
            self._bag_cache = (key, bag_index_bsr(*pattern, self.block[1]))
        return self._bag_cache[1]

    def _load_from_state_dict(self, *args, **kwargs):
        self._bag_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor, block=(32, 32), layout: str = "auto") -> "BlockSparseLinear":
        """Swap ``linear`` for a module computing exactly ``F.linear(x, weight * mask, bias)``.

        ``mask``: bool, the weight's shape, kept entries form whole ``block`` blocks (sizes that are
        not multiples of the block are zero padded). ``layout``: ``auto``, ``balanced`` (unbalanced
        masks padded with zero blocks) or ``bsr``.
        """
        _check_linear(linear)
        block = check_block("block", block)
        weight = linear.weight.detach()
        if layout not in ("auto", "balanced", "bsr"):
            raise ValueError(f"layout must be 'auto', 'balanced' or 'bsr', got {layout!r}")
        if layout == "auto":
            layout = cls.choose_layout(mask if mask is not None else torch.ones_like(weight, dtype=torch.bool), block)
        if layout == "balanced":
            fmt = BalancedBlock.from_dense(weight, mask, block, pad_rows=True)
        else:
            fmt = BSR.from_dense(weight, mask, block)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(fmt, bias)

    @staticmethod
    def choose_layout(mask: torch.Tensor, block) -> str:
        """``balanced`` unless padding to the largest row would add more than ``MAX_PAD_OVERHEAD``."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise TypeError("mask must be a 2-D bool torch.Tensor")
        return BlockSparseLinear.layout_for_counts(block_mask_grid(mask, check_block("block", block)).sum(dim=1))

    @staticmethod
    def layout_for_counts(counts: torch.Tensor) -> str:
        """:meth:`choose_layout` from the number of kept blocks of each block row (a loader knows them
        from a packed weight's index tensors, without the mask)."""
        nnzb = int(counts.sum())
        padded = int(counts.max()) * counts.numel() if counts.numel() else 0
        return "balanced" if padded <= (1.0 + MAX_PAD_OVERHEAD) * nnzb else "bsr"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        supported = block_supported(*self.block) and _triton_dtype(x.dtype)
        if resolve_backend(self.backend, x, supported=supported, what="BlockSparseLinear") == "triton":
            from .triton_block import block_sparse_linear_triton

            crow = None if self.layout == "balanced" else self.crow_indices
            cols = self.col_idx if self.layout == "balanced" else self.col_indices
            return block_sparse_linear_triton(x, self.values, cols, crow, self.bias, self.in_features, self.out_features)
        if self.layout == "balanced":
            return balanced_block_linear(x, self.values, self.col_idx, self.bias, self.in_features, self.out_features)
        # The small-batch (embedding_bag) index is cached on the module; only that path uses it.
        small = x.numel() < LARGE_BATCH_BSR * max(1, x.shape[-1])
        bag = self._bag_index() if small and not torch.compiler.is_exporting() else None
        return bsr_linear(
            x, self.values, self.crow_indices, self.col_indices, self.row_indices, self.bias, self.in_features,
            self.out_features, bag_index=bag,
        )

    def to_format(self) -> BalancedBlock | BSR:
        """The sparse format (values in the format's own layout) of the current weights."""
        bh, bw = self.block
        v = self.values.detach()
        shape = (self.out_features, self.in_features)
        if self.layout == "balanced":
            R, kbw, _ = v.shape
            k = self.col_idx.shape[1]
            values = v.view(R, k, bw, bh).permute(0, 3, 1, 2).reshape(R, bh, kbw)  # (R, bh, k*bw)
            return BalancedBlock(values.contiguous(), self.col_idx, self.row_nnz, shape, self.block)
        return BSR(self.crow_indices, self.col_indices, v.transpose(1, 2).contiguous(), shape, self.block)

    def to_dense_weight(self) -> torch.Tensor:
        """Dense ``(out, in)`` weight, zeros where pruned."""
        return self.to_format().to_dense()

    def mask(self) -> torch.Tensor:
        """Bool mask of the kept blocks, ``(out, in)``."""
        return self.to_format().to_mask()

    def extra_repr(self) -> str:
        stored = self.values.numel() / max(1, self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
            f"layout={self.layout}, density={stored:.3f}, bias={self.bias is not None}"
        )


class NMLinear(_SparseLinearBase):
    """``y = x @ (W * mask).T + b`` with an N:M-sparse ``W`` (groups along the input dimension)."""

    def __init__(self, fmt: NMPacked, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(fmt, NMPacked):
            raise TypeError(f"fmt must be an NMPacked, got {type(fmt).__name__}")
        self.out_features, self.in_features = fmt.shape
        self.n, self.m = fmt.n, fmt.m
        out, G, n = fmt.values.shape
        self.in_padded = G * fmt.m
        self.values = nn.Parameter(fmt.values.reshape(out, G * n).clone())  # (out, G*n)
        self.register_buffer("indices", fmt.indices.clone())
        self.register_buffer("counts", fmt.counts.clone())
        self.register_buffer("columns", fmt.column_indices(), persistent=False)
        self.bias = _bias(bias)
        self.backend = Backend.AUTO
        #: W and W^T both 2:4: training can run forward and backward on the 2:4 sparse kernels
        self.transposable = (self.n, self.m) == (2, 4) and fmt.transposable()  # from the slots: no (out, in) mask
        self._semi = SemiStructuredWeight()

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor, n: int = 2, m: int = 4) -> "NMLinear":
        """Swap ``linear``; ``mask`` keeps at most ``n`` of every ``m`` consecutive inputs of each row."""
        _check_linear(linear)
        fmt = NMPacked.from_dense(linear.weight.detach(), mask, n, m)
        return cls(fmt, None if linear.bias is None else linear.bias.detach())

    def semi_structured_reason(self, x: torch.Tensor) -> str | None:
        """Why ``x`` does not take the 2:4 semi-structured path (None: it does)."""
        if check_backend(self.backend) in (Backend.TORCH, Backend.NATIVE):
            return f"backend is {str(self.backend)!r}"
        if torch.compiler.is_exporting():
            return "exporting"
        if self._training_values() and not getattr(self, "transposable", False):
            return "training needs a transposable 2:4 mask (W^T compressed for the backward product)"
        return semi_structured_unavailable_reason(self.n, self.m, x.dtype, x.device)

    def _training_values(self) -> bool:
        return torch.is_grad_enabled() and self.values.requires_grad

    def _trainable_values(self) -> torch.Tensor:
        """``values`` times the real-slot mask: spare slots (groups keeping fewer than ``n``) get no
        gradient, so training cannot grow weights at positions the mask prunes."""
        out, G, n = self.indices.shape
        real = torch.arange(n, device=self.counts.device) < self.counts.unsqueeze(2).long()  # (out, G, n)
        return self.values * real.view(out, G * n)

    def trainable_dense_weight(self) -> torch.Tensor:
        """``(out, in)`` masked weight built differentiably from ``values`` (gradients reach only the
        real slots)."""
        dense = self.values.new_zeros(self.out_features, self.in_padded).scatter(1, self.columns, self._trainable_values())
        return dense[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.is_cuda and self.semi_structured_reason(x) is None:
            if not hasattr(self, "_semi"):  # modules pickled before the attribute existed
                self._semi = SemiStructuredWeight()
            if self._training_values():
                return semi_structured_linear_trainable(x, self.trainable_dense_weight(), self._semi, self.values,
                                                        self.bias)
            return self._semi.linear(x, self.values, self.to_dense_weight, self.bias, self.in_features,
                                     self.out_features)
        check_backend(self.backend)
        values = self._trainable_values() if self._training_values() else self.values
        return nm_linear(x, values, self.columns, self.bias, self.in_features, self.in_padded)

    def to_format(self) -> NMPacked:
        out, G, n = self.indices.shape
        v = self.values.detach().view(out, G, n)
        return NMPacked(v.contiguous(), self.indices, self.counts, (self.out_features, self.in_features), self.n, self.m)

    def to_dense_weight(self) -> torch.Tensor:
        return self.to_format().to_dense()

    def mask(self) -> torch.Tensor:
        return self.to_format().to_mask()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, m={self.m}, bias={self.bias is not None}"


class GatedBlockLinear(nn.Module):
    """Linear whose blocks are chosen per example by a gate network (top-k, rescaled gate values).

    ``blocks`` ``(K, bw, bh)`` hold every block of the (zero padded) weight, block ``j*Ci + i``
    transposed; ``gate`` is ``nn.Linear(in_features, K)``. ``keep`` is the kept fraction of blocks
    (of all K in ``global`` mode, of every block row's ``Ci`` in ``row`` mode).
    """

    backend: str = Backend.AUTO

    def __init__(self, in_features: int, out_features: int, block=(128, 128), keep: float = 0.5, mode: str = "global",
                 bias: bool = True, dtype: torch.dtype = torch.float32, seed: int = 0):
        super().__init__()
        bh, bw = self.block = check_block("block", block)
        if mode not in GATE_MODES:
            raise ValueError(f"mode must be one of {GATE_MODES}, got {mode!r}")
        if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise TypeError(f"dtype {dtype} is not supported")
        self.in_features, self.out_features, self.mode, self.keep = in_features, out_features, mode, float(keep)
        self.grid = (ceil_div(out_features, bh), ceil_div(in_features, bw))
        self.k = kept_blocks(keep, self.grid, mode)
        K = self.grid[0] * self.grid[1]
        gen = torch.Generator().manual_seed(seed)
        bound = in_features ** -0.5
        self.blocks = nn.Parameter((torch.rand(K, bw, bh, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None
        self.gate = nn.Linear(in_features, K, dtype=dtype)
        self.backend = Backend.AUTO  # applies when forward's path is "auto" (see the module docstring)
        with torch.no_grad():  # deterministic gate init: uniform(-1/sqrt(in), 1/sqrt(in)), zero bias
            self.gate.weight.copy_((torch.rand(K, in_features, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound))
            self.gate.bias.zero_()

    @classmethod
    def from_dense(cls, linear: nn.Linear, block=(128, 128), keep: float = 0.5, mode: str = "global",
                   gate: nn.Linear | None = None, seed: int = 0) -> "GatedBlockLinear":
        """Gated version of ``linear`` (weights copied); ``gate`` copied if given, else seeded init."""
        _check_linear(linear)
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, block, keep, mode, linear.bias is not None, w.dtype, seed)
        mod.to(w.device)
        with torch.no_grad():
            mod.blocks.copy_(_to_blocks_t(w, mod.block))
            if linear.bias is not None:
                mod.bias.copy_(linear.bias)
            if gate is not None:
                if not isinstance(gate, nn.Linear) or gate.weight.shape != mod.gate.weight.shape:
                    raise ValueError(f"gate must be an nn.Linear({linear.in_features}, {mod.gate.out_features})")
                mod.gate.load_state_dict(gate.state_dict())
        return mod

    def select(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept block indices and gate values for ``x2 (B, in)`` (see :func:`select_blocks`)."""
        return select_blocks(gate_values(self.gate(x2)), self.k, self.grid, self.mode)

    def forward(self, x: torch.Tensor, path: str = "auto") -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)  # (B, in)
        if (path == "native" or (path == "auto" and self.backend in (Backend.AUTO, Backend.NATIVE))) and not x2.is_cuda:
            # CPU inference: gate, top-k and kept blocks in one compiled call where it can run (kernels/native.py)
            fused = gated_linear_fused(self, x2, selection=False)
            if fused is not None:
                return fused[0].reshape(*x.shape[:-1], self.out_features)
        idx, g = self.select(x2)
        supported = block_supported(*self.block) and _triton_dtype(x2.dtype)
        if path == "auto" and resolve_backend(self.backend, x2, supported=supported,
                                              what="GatedBlockLinear") == "triton":
            from .triton_gated import gated_block_linear_triton

            y = gated_block_linear_triton(x2, self.blocks, idx, g, self.grid, self.mode, self.bias,
                                          self.in_features, self.out_features)
            return y.reshape(*x.shape[:-1], self.out_features)
        y = gated_block_linear(x2, self.blocks, idx, g, self.grid, self.mode, self.bias, self.in_features,
                               self.out_features, path=path)
        return y.reshape(*x.shape[:-1], self.out_features)

    def to_dense_weight(self) -> torch.Tensor:
        """The full dense weight (every block; gating is per example)."""
        (Ro, Ci), (bh, bw) = self.grid, self.block
        w = self.blocks.detach().view(Ro, Ci, bw, bh).permute(0, 3, 1, 2).reshape(Ro * bh, Ci * bw)
        return w[: self.out_features, : self.in_features]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"keep={self.keep}, mode={self.mode}, kept={self.k}, bias={self.bias is not None}")


def _to_blocks_t(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``(out, in)`` -> ``(K, bw, bh)``: block ``j*Ci + i`` transposed (zero padded)."""
    bh, bw = block
    wp = pad_to_blocks(weight, block)
    Ro, Ci = wp.shape[0] // bh, wp.shape[1] // bw
    return wp.view(Ro, bh, Ci, bw).permute(0, 2, 3, 1).reshape(Ro * Ci, bw, bh)  # (K, bw, bh)
