"""Gated (input-dependent block-sparse) layers: gate networks, gated Linear, ``GatedLSTM`` / ``GatedGRU``.

Hadifar, Deleu, Develder, Demeester, "Block-wise Dynamic Sparseness" (arXiv 2001.04686;
docs/methods.md section 2). Every gated weight matrix is a
:class:`~compressor.kernels.modules.GatedBlockLinear`: a gate network scores its ``K`` blocks
from the layer's own input, the top ``k`` are kept per example and rescaled
(``g = s_kept / (sum(s_kept) / K)``, scores ``softplus`` of the gate's logits).

* :class:`GatedLinear` -- a ``GatedBlockLinear`` that picks its compute path by batch: the gathered
  kernels (the compiled CPU kernel of :mod:`.native` for inference, else embedding_bag; TopK +
  Gather + MatMul in ONNX) for small batches, the streaming batch-1 case
  the method is for, and while exporting; for large batches and in training a masked dense form
  (per example a block-gate matrix ``G (B, Ro, Ci)`` with ``g`` at the kept blocks, zeros elsewhere,
  one batched matmul per block row) that computes the same function with dense GEMMs and cheap
  autograd. Every example has its own mask, so a batch cannot share one sparse GEMM (docs/methods.md section 2).
* :func:`build_gate` -- the gate network: one ``Linear(in, K)`` (the paper) or, with ``rank`` r > 0,
  a bottleneck ``Linear(in, r, bias=False) -> Linear(r, K)`` (``in*r + r*K`` multiply-adds
  instead of ``in*K``).
* :func:`gated_linear` -- a ``GatedLinear`` built from an ``nn.Linear`` with a chosen gate and
  initialisation. ``init="random"`` (default): the kernel's seeded random gate and unscaled weights
  (the paper's; with near-uniform random scores the rescaled gates average ``K / n_kept`` on a
  random half, an unbiased, dropout-like estimate of the dense product). ``init="norm"``: the gate
  starts input-independent (zero weights of its last layer) with a bias that ranks the blocks by
  their Frobenius norm, so every input first keeps the largest-norm blocks, and the stored weights
  are scaled by ``n_kept / K`` so that step 0 computes exactly static magnitude block pruning.
  Measured on the built-in LM (keep 0.5, 64x64 blocks, before training): test perplexity 15.5 with
  ``random``, 65.7 with ``norm`` (dense 3.26); hence the default (BENCHMARKS.md).
* :class:`GatedLSTM` / :class:`GatedGRU` -- drop-ins for ``nn.LSTM`` / ``nn.GRU`` built like
  :class:`~compressor.kernels.rnn.SparseLSTM`: per layer and direction ``proj["ih_l0"]`` (gated from
  ``x_t``) and ``proj["hh_l0"]`` (gated from ``h_{t-1}``), each with its own gate network; weights
  not asked for stay dense ``nn.Linear``. Same ``forward`` signature as ``nn.LSTM``, a streaming
  ``step(x_t, state)`` and ``step_module()`` (ONNX: TopK + Gather + MatMul).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .modules import GatedBlockLinear
from .rnn import SparseGRU, SparseLSTM

__all__ = ["GatedLinear", "LowRankGate", "build_gate", "gate_macs", "gated_linear", "GatedLSTM", "GatedGRU",
           "GATE_INITS"]

GATE_INITS = ("norm", "random")
#: From this many examples on (or while training) ``GatedLinear`` runs the masked dense path.
DENSE_BATCH = 16
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1


class LowRankGate(nn.Module):
    """``Linear(in, rank, bias=False) -> Linear(rank, K)``: a gate network with a bottleneck."""

    def __init__(self, in_features: int, num_blocks: int, rank: int, dtype=torch.float32, seed: int = 0):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype)
        self.up = nn.Linear(rank, num_blocks, dtype=dtype)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            bound = in_features ** -0.5
            self.down.weight.copy_((torch.rand(rank, in_features, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound))
            bound = rank ** -0.5
            self.up.weight.copy_((torch.rand(num_blocks, rank, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound))
            self.up.bias.zero_()

    @property
    def bias(self) -> torch.Tensor:
        return self.up.bias

    @property
    def weight_out(self) -> torch.Tensor:
        return self.up.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))  # (B, K)


class GatedLinear(GatedBlockLinear):
    """:class:`GatedBlockLinear` with a batch-dependent compute path (see the module docstring)."""

    def forward(self, x: torch.Tensor, path: str = "auto") -> torch.Tensor:
        if path == "auto" and not torch.compiler.is_exporting():
            batch = x.numel() // max(1, x.shape[-1])
            if (torch.is_grad_enabled() and self.training) or batch >= DENSE_BATCH:
                path = "dense"
        if path != "dense":
            return super().forward(x, path)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)  # (B, in)
        idx, g = self.select(x2)
        return masked_dense(x2, self.blocks, idx, g, self.grid, self.bias, self.out_features).reshape(
            *x.shape[:-1], self.out_features)


def masked_dense(x2: torch.Tensor, blocks_t: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, grid: tuple[int, int],
                 bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """``y_j = sum_i G[b, j, i] W_ji x_i`` with ``G`` zero except ``g`` at the kept blocks ``idx``."""
    (Ro, Ci), (K, bw, bh) = grid, blocks_t.shape
    B = x2.shape[0]
    gmat = x2.new_zeros(B, K).scatter(1, idx, g)  # (B, K): differentiable in g
    if x2.shape[1] != Ci * bw:
        x2 = torch.nn.functional.pad(x2, (0, Ci * bw - x2.shape[1]))  # (B, Ci*bw)
    xs = gmat.view(B, Ro, Ci, 1) * x2.view(B, 1, Ci, bw)  # (B, Ro, Ci, bw): input scaled per block
    w = blocks_t.view(Ro, Ci * bw, bh)  # (Ro, Ci*bw, bh): block row j, input column i*bw + c
    y = torch.bmm(xs.view(B, Ro, Ci * bw).transpose(0, 1), w)  # (Ro, B, bh)
    y = y.transpose(0, 1).reshape(B, Ro * bh)[:, :out_features]
    return y + bias if bias is not None else y


def build_gate(in_features: int, num_blocks: int, rank: int = 0, dtype=torch.float32, seed: int = 0) -> nn.Module:
    """The gate network: ``nn.Linear(in, K)`` for ``rank`` 0, else a :class:`LowRankGate`."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0 (0: a full Linear gate), got {rank}")
    if rank == 0:
        return nn.Linear(in_features, num_blocks, dtype=dtype)
    return LowRankGate(in_features, num_blocks, rank, dtype, seed)


def gate_macs(in_features: int, num_blocks: int, rank: int = 0) -> int:
    """Multiply-adds of the gate network per example: ``in*K``, or ``in*r + r*K`` with a bottleneck."""
    return in_features * num_blocks if rank == 0 else in_features * rank + rank * num_blocks


def gated_linear(linear: nn.Linear, block, keep: float, mode: str = "global", rank: int = 0, init: str = "random",
                 seed: int = 0) -> GatedLinear:
    """A :class:`GatedBlockLinear` for ``linear`` (weights copied) with the gate and init described above."""
    if init not in GATE_INITS:
        raise ValueError(f"init must be one of {GATE_INITS}, got {init!r}")
    mod = GatedLinear.from_dense(linear, tuple(block), keep, mode, seed=seed)
    K = mod.grid[0] * mod.grid[1]
    dtype = mod.blocks.dtype
    if rank:
        mod.gate = build_gate(linear.in_features, K, rank, dtype, seed).to(mod.blocks.device)
    if init == "norm":
        n_kept = mod.k if mode == "global" else mod.k * mod.grid[0]
        with torch.no_grad():
            norms = mod.blocks.double().pow(2).sum(dim=(1, 2)).sqrt()  # (K,)
            z = (norms - norms.mean()) / (norms.std(unbiased=False) + 1e-12)
            last = mod.gate if rank == 0 else mod.gate.up
            last.weight.zero_()
            last.bias.copy_((_SOFTPLUS_ONE + 0.01 * z).to(dtype))  # scores ~1, ordered by block norm
            mod.blocks.mul_(n_kept / K)  # rescaled gates ~K/n_kept: step 0 equals static pruning
    return mod


class _GatedMixin:
    """What gated recurrent layers add to the sparse ones: building from dense with gated projections."""

    @classmethod
    def from_dense(cls, rnn: nn.RNNBase, weights=None, block=(32, 32), keep: float = 0.5, mode: str = "global",
                   rank: int = 0, init: str = "random", seed: int = 0):
        """Gate the weights named in ``weights`` (``weight_ih_l0``, ``weight_hh_l1_reverse``, ...; None:
        every one) of an ``nn.LSTM`` / ``nn.GRU``; the others stay dense ``nn.Linear``."""
        chosen = None if weights is None else set(weights)
        return cls._from_cells(
            rnn, chosen, lambda i, name, lin: gated_linear(lin, block, keep, mode, rank, init, seed + i)
        )

    def gated(self) -> dict[str, GatedBlockLinear]:
        """The gated projections by weight name (``weight_hh_l0`` -> module)."""
        return {"weight_" + part: mod for part, mod in self.proj.items() if isinstance(mod, GatedBlockLinear)}


class GatedLSTM(_GatedMixin, SparseLSTM):
    """Input-dependent block-sparse drop-in for ``nn.LSTM`` (build with :meth:`from_dense`).

    ``forward(input, hx)`` runs the gated input projection for the whole sequence at once (the gate
    of ``W_ih`` reads ``x_t``) and the gated recurrent projection once per step (its gate reads
    ``h_{t-1}``); ``step(x_t, (h, c))`` is one streaming step through all layers.
    """


class GatedGRU(_GatedMixin, SparseGRU):
    """Input-dependent block-sparse drop-in for ``nn.GRU`` (build with :meth:`from_dense`)."""
