"""2:4 semi-structured sparse linear on CUDA through torch (``torch.sparse.to_sparse_semi_structured``).

N:M on GPU is not hand-rolled in Triton: Ampere and later GPUs have 2:4 sparse tensor cores,
reached through torch's semi-structured tensors (cuSPARSELt, or CUTLASS kernels), CUDA only.
:class:`compressor.kernels.NMLinear` (``backend`` ``auto``/``triton``) uses this path on CUDA
when the layer is 2:4, fp16/bf16, and not being trained through its packed values (the compressed
weight is built from the values and is not differentiable w.r.t. them); on CPU, or otherwise, it
stays on the pure-torch op. Nothing here runs on CPU: :func:`semi_structured_unavailable_reason`
says why, and the tests skip cleanly.

Shapes: the compressed weight needs rows a multiple of 32 and columns a multiple of 64 (the
stricter CUTLASS limits); :class:`SemiStructuredWeight` pads the weight with zero rows/columns to
multiples of 64 on both sides (still 2:4, and its transpose meets the same limits) and pads ``x`` /
crops ``y`` to match.

Whether it is faster than dense depends on the shape (small batches or small layers often are not):
the ``swap_kernels`` pass measures the module against dense on the layer's own shape and installs
it only where it wins, and ``compress bench kernels --device cuda`` reports the 2:4 rows.

Training (Hubara et al., arXiv 2102.08124): when the 2:4 mask of ``W`` is also 2:4 along the other
dimension (``nm_convert`` with ``transposable: true``; :func:`is_transposable_2to4` checks it),
``W^T`` compresses too, so both products of a training step with ``W`` run on sparse tensor cores:
the forward ``y = x W^T`` (compressed ``W``) and the backward ``grad_x = grad_y W`` (compressed
``W^T``). :func:`semi_structured_linear_trainable` does that; the weight gradient
``grad_W = grad_y^T x`` is a dense product whose pruned entries are dropped by the packed layout.
Both compressed copies are rebuilt when the weight changes (once per optimizer step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._checks import pad_columns

__all__ = [
    "SEMI_STRUCTURED_DTYPES",
    "semi_structured_unavailable_reason",
    "is_transposable_2to4",
    "SemiStructuredWeight",
    "semi_structured_linear_trainable",
]

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
_MULT = 64  # pad both dims: W (rows % 32, cols % 64) and W^T meet CUTLASS's limits


def semi_structured_unavailable_reason(n: int, m: int, dtype: torch.dtype, device: torch.device | str) -> str | None:
    """Why the 2:4 semi-structured path cannot run (None: it can)."""
    if (n, m) != (2, 4):
        return f"semi-structured sparsity is 2:4 only, layer is {n}:{m}"
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return f"semi-structured path needs float16 or bfloat16, got {dtype}"
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "torch semi-structured sparse tensors are CUDA only"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "2:4 sparse tensor cores need compute capability 8.0 or newer"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return "this torch build has no torch.sparse.to_sparse_semi_structured"
    return None


def is_transposable_2to4(mask: torch.Tensor) -> bool:
    """True if bool ``mask`` keeps at most 2 of every 4 along rows *and* along columns (4x4 tiles)."""
    out, inp = mask.shape
    if out % 4 or inp % 4:
        return False
    rows = mask.view(out, inp // 4, 4).sum(-1) <= 2
    cols = mask.t().reshape(inp, out // 4, 4).sum(-1) <= 2
    return bool(rows.all() and cols.all())


class SemiStructuredWeight:
    """Cached compressed 2:4 copies of a layer's masked weight (and of its transpose, for training),
    rebuilt when their source changes.

    ``source`` is the tensor the dense weight is derived from (NMLinear's packed ``values``); the
    cache key is its storage pointer and version counter, so an in-place update (an optimizer step,
    ``copy_``) rebuilds the compressed weights on the next call.
    """

    def __init__(self):
        self._key = None
        self._sparse = None
        self._sparse_t = None
        self.padded_shape: tuple[int, int] | None = None

    def __deepcopy__(self, memo):  # a copied module rebuilds its own cache
        return SemiStructuredWeight()

    def __getstate__(self):  # nothing device-specific is pickled
        return {"_key": None, "_sparse": None, "_sparse_t": None, "padded_shape": None}

    def get(self, source: torch.Tensor, make_dense: Callable[[], torch.Tensor], transposed: bool = False):
        """The semi-structured tensor of ``make_dense()`` (an ``(out, in)`` masked weight), padded
        to multiples of 64; with ``transposed`` the pair (W, W^T), both compressed."""
        key = (source.data_ptr(), source._version, source.dtype, source.device)
        if key != self._key or (transposed and self._sparse_t is None):
            weight = make_dense().detach()
            out, inp = weight.shape
            w = F.pad(weight, (0, (-inp) % _MULT, 0, (-out) % _MULT)).contiguous()  # (out_p, in_p); zeros are 2:4
            self._sparse = torch.sparse.to_sparse_semi_structured(w)
            self._sparse_t = torch.sparse.to_sparse_semi_structured(w.t().contiguous()) if transposed else None
            self.padded_shape = tuple(w.shape)
            self._key = key
        return (self._sparse, self._sparse_t) if transposed else self._sparse

    def linear(self, x: torch.Tensor, source: torch.Tensor, make_dense: Callable[[], torch.Tensor],
               bias: torch.Tensor | None, in_features: int, out_features: int) -> torch.Tensor:
        """``F.linear(x, W, bias)`` with the compressed ``W``; ``x (..., in)`` -> ``(..., out)``."""
        ws = self.get(source, make_dense)
        x2 = pad_columns(x.reshape(-1, in_features), self.padded_shape[1])  # (B, in_p)
        y = F.linear(x2, ws)[:, :out_features]  # (B, out)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], out_features)


class _SparseWeightLinear(torch.autograd.Function):
    """``y = x W^T`` whose forward and input-gradient products use given operators for ``W`` and ``W^T``.

    ``w_op`` ``(out_p, in_p)`` and ``wt_op`` ``(in_p, out_p)`` are anything ``F.linear`` accepts as
    a weight (compressed semi-structured tensors on CUDA), zero padded; ``weight`` ``(out, in)`` is
    the dense weight the operators were built from, the input through which ``grad_W`` flows.
    """

    @staticmethod
    def forward(ctx, x2, weight, w_op, wt_op):
        ctx.save_for_backward(x2)
        ctx.wt_op, ctx.in_features = wt_op, x2.shape[1]
        out = weight.shape[0]
        return F.linear(pad_columns(x2, w_op.shape[1]), w_op)[:, :out]  # (B, out)

    @staticmethod
    def backward(ctx, grad_y):
        (x2,) = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # (B, out) x W -> (B, in), through the compressed W^T
            grad_x = F.linear(pad_columns(grad_y, ctx.wt_op.shape[1]), ctx.wt_op)[:, : ctx.in_features]
        if ctx.needs_input_grad[1]:
            grad_w = grad_y.t() @ x2  # (out, in), dense
        return grad_x, grad_w, None, None


def semi_structured_linear_trainable(x: torch.Tensor, weight: torch.Tensor, cache: SemiStructuredWeight,
                                     source: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for training, forward and input gradient on 2:4 sparse kernels.

    ``weight`` ``(out, in)`` is the masked weight built differentiably from ``source`` (the packed
    values), so ``grad_W`` reaches only the kept entries; its mask must be transposable 2:4.
    """
    out, inp = weight.shape
    w_op, wt_op = cache.get(source, lambda: weight, transposed=True)
    y = _SparseWeightLinear.apply(x.reshape(-1, inp), weight, w_op, wt_op)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out)
