"""2:4 semi-structured sparse linear on CUDA through torch (``torch.sparse.to_sparse_semi_structured``).

N:M on GPU is not hand-rolled in Triton: Ampere and later GPUs have 2:4 sparse tensor cores,
reached through torch's semi-structured tensors (cuSPARSELt, or CUTLASS kernels), CUDA only.
:class:`compressor.kernels.NMLinear` (``backend`` ``auto``/``triton``) uses this path on CUDA
when the layer is 2:4, fp16/bf16, and not being trained through its packed values (the compressed
weight is built from the values and is not differentiable w.r.t. them); on CPU, or otherwise, it
stays on the pure-torch op. Nothing here runs on CPU: :func:`semi_structured_unavailable_reason`
says why, and the tests skip cleanly.

Shapes: the compressed weight needs rows a multiple of 32 and columns a multiple of 64 (the
stricter CUTLASS limits); :class:`SemiStructuredWeight` pads the weight with zero rows/columns
(still 2:4) and pads ``x`` / crops ``y`` to match.

Whether it is faster than dense depends on the shape (small batches or small layers often are not):
the ``swap_kernels`` pass measures the module against dense on the layer's own shape and installs
it only where it wins, and ``compress bench kernels --device cuda`` reports the 2:4 rows.

Transposable masks (Hubara et al., arXiv 2102.08124): when the 2:4 mask of ``W`` is also 2:4 along
the other dimension (``nm_convert`` with ``transposable: true``), ``W^T`` can be compressed too, so
the backward product ``grad_x = grad_y @ W`` could also run on sparse tensor cores
(:func:`is_transposable_2to4` checks it). This wrapper does not do that yet: it is inference only,
and training falls back to the torch op (dense math for gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "SEMI_STRUCTURED_DTYPES",
    "semi_structured_unavailable_reason",
    "is_transposable_2to4",
    "SemiStructuredWeight",
]

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
_ROW_MULT, _COL_MULT = 32, 64


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
    """A cached compressed 2:4 copy of a layer's masked weight, rebuilt when its source changes.

    ``source`` is the tensor the dense weight is derived from (NMLinear's packed ``values``); the
    cache key is its storage pointer and version counter, so an in-place update (an optimizer step,
    ``copy_``) rebuilds the compressed weight on the next call.
    """

    def __init__(self):
        self._key = None
        self._sparse = None
        self.padded_shape: tuple[int, int] | None = None

    def __deepcopy__(self, memo):  # a copied module rebuilds its own cache
        return SemiStructuredWeight()

    def __getstate__(self):  # nothing device-specific is pickled
        return {"_key": None, "_sparse": None, "padded_shape": None}

    def get(self, source: torch.Tensor, make_dense: Callable[[], torch.Tensor]):
        """The semi-structured tensor of ``make_dense()`` (an ``(out, in)`` masked weight), padded."""
        key = (source.data_ptr(), source._version, source.dtype, source.device)
        if key != self._key:
            weight = make_dense().detach()
            out, inp = weight.shape
            po, pi = (-out) % _ROW_MULT, (-inp) % _COL_MULT
            w = F.pad(weight, (0, pi, 0, po)).contiguous()  # (out_p, in_p); zero padding is 2:4
            self._sparse = torch.sparse.to_sparse_semi_structured(w)
            self.padded_shape = tuple(w.shape)
            self._key = key
        return self._sparse

    def linear(self, x: torch.Tensor, source: torch.Tensor, make_dense: Callable[[], torch.Tensor],
               bias: torch.Tensor | None, in_features: int, out_features: int) -> torch.Tensor:
        """``F.linear(x, W, bias)`` with the compressed ``W``; ``x (..., in)`` -> ``(..., out)``."""
        ws = self.get(source, make_dense)
        in_p = self.padded_shape[1]
        x2 = x.reshape(-1, in_features)  # (B, in)
        if in_p != in_features:
            x2 = F.pad(x2, (0, in_p - in_features))  # (B, in_p)
        y = F.linear(x2, ws)[:, :out_features]  # (B, out)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], out_features)
