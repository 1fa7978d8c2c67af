"""N:M sparse linear in pure torch.

N:M along the input dimension (keep at most ``n`` of every ``m`` consecutive inputs of each
output row; Hubara et al., "Accelerated Sparse Neural Training", arXiv 2102.08124). Packed values
``(out, G*n)`` and their absolute input columns ``(out, G*n)`` come from
:class:`compressor.kernels.formats.NMPacked`.

CPUs have no N:M hardware: this op exists for correctness, memory (the packed weight) and export,
not speed. Small batches gather ``x`` at the stored columns and reduce
(``(B, out, G*n) -> (B, out)``); large batches scatter the packed values into a dense matrix and
use one GEMM (which wins once the gather would exceed the weight's size). Both paths are
differentiable w.r.t. ``x`` and the values. ONNX export uses the gather path (Gather, Mul,
ReduceSum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import pad_columns

__all__ = ["nm_linear", "LARGE_BATCH_NM"]

#: Batch size from which nm_linear scatters to dense and runs one GEMM.
LARGE_BATCH_NM = 4


def nm_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    in_padded: int,
    *,
    large_batch: int = LARGE_BATCH_NM,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` for a packed N:M ``W``.

    ``values``/``columns (out, G*n)``; ``in_padded = G*m`` (columns may point into the zero padding);
    ``x (..., in_features)``; returns ``(..., out)``.
    """
    out = values.shape[0]
    x2 = x.reshape(-1, in_features)  # (B, in)
    B = x2.shape[0]
    if B >= large_batch and not torch.compiler.is_exporting():
        dense = values.new_zeros(out, in_padded).scatter(1, columns, values)  # (out, G*m)
        y = F.linear(x2, dense[:, :in_features])
    else:
        g = pad_columns(x2, in_padded)[:, columns]  # (B, out, G*n)
        y = (g * values).sum(dim=2)  # (B, out)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out)
