"""Block-sparse linear ops in pure torch: balanced block and general BSR.

Balanced block (every block row keeps ``k`` blocks; Narang et al., arXiv 1711.02782, and the
balanced layout of docs/methods.md sections 1 and 2): the product is one gather of ``x``'s block columns and
one batched matmul. Values are kept in the *kernel layout* ``(R, k*bw, bh)``: block row ``r``'s
kept blocks, in the order of ``col_idx[r]``, each transposed, so that

``g = x[:, col blocks] -> (R, B, k*bw)`` and ``y = bmm(g, values_t) -> (R, B, bh)`` (an ``M = B``
GEMM per block row; measured several times faster on CPU than the ``(R, bh, k*bw) x (R, k*bw, 1)``
orientation, which hits a slow matrix-vector path, and faster at every batch size we tried than
``bmm(values_t^T, x^T[col blocks])``). At large batch and moderate sparsity a dense GEMM wins, so
the ops then scatter the values into a dense matrix (see ``DENSE_BATCH``).

The gathered ``x`` is made contiguous before the bmm (measured at 4096x4096, 90%: 7-67% faster
than a strided ``(R, B, k*bw)`` view at batch 1-16 with rotating weight copies, about 2% with the
weights in cache). At batch 1 with the weights already in cache the
``embedding_bag`` product below is faster still (140 us against 300 us at 4096x4096, 90%), but
with the weights streamed from DRAM, the case a big layer is in, the bmm wins (450 us against
580 us), so the balanced layout keeps the bmm.

General BSR (rows keep different numbers of blocks): for small batches one
``F.embedding_bag`` call (its table is the stored blocks' column segments, the per-sample weights
are the matching entries of ``x``; one bag per output block row: a fused gather + weighted sum
with no padding and no per-call copy of the values); for large batches a per-block batched matmul
``(nnzb, B, bw) x (nnzb, bw, bh)`` followed by ``index_add`` over block rows.

All paths are differentiable w.r.t. ``x`` and the values (autograd through index_select, bmm and
embedding_bag), so these ops can be fine-tuned. While exporting (``torch.compiler.is_exporting()``)
the gather + matmul paths are used, which become plain ONNX Gather / MatMul / ScatterND.

Inputs are padded with zeros up to the block grid and outputs are cropped back (see
:mod:`compressor.kernels.formats`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import pad_columns

__all__ = [
    "balanced_block_linear",
    "bsr_linear",
    "BagIndex",
    "bag_index_bsr",
    "DENSE_BATCH",
    "DENSE_DENSITY",
    "LARGE_BATCH_BSR",
]

#: From this many rows on, block ops scatter to dense and run one GEMM when the stored density is
#: at least DENSE_DENSITY (measured on 2 cores: our bmm over 32x32 blocks reaches about a fifth of
#: dense GEMM efficiency at batch 256+, so sparsity below ~80% loses there).
DENSE_BATCH = 128
DENSE_DENSITY = 0.2
#: Batch size from which the BSR op switches from embedding_bag to per-block bmm.
LARGE_BATCH_BSR = 4


class BagIndex(NamedTuple):
    """Index tensors of the BSR small-batch ``embedding_bag`` product, which depend only on the
    sparsity pattern (a module builds them once: per call, building them took as long as the
    product itself at batch 1 with the weights in cache).

    The table is the stored values viewed ``(L, bh)`` (``L`` = stored blocks x ``bw``: one table
    row per stored block column); ``cols (L,)`` is the input column each table row multiplies,
    ``rows (L,)`` = ``arange(L)`` (every table row once) and ``offsets (R+1,)`` starts one bag per
    output block row (the end offset selects fbgemm's fast path).
    """

    cols: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor


def bag_index_bsr(crow_indices: torch.Tensor, col_indices: torch.Tensor, bw: int) -> BagIndex:
    """:class:`BagIndex` of a BSR layout (``crow_indices (R+1,)``, ``col_indices (nnzb,)``)."""
    span = torch.arange(bw, device=col_indices.device)
    cols = (col_indices.view(-1, 1) * bw + span).view(-1)
    return BagIndex(cols, torch.arange(cols.numel(), device=cols.device), crow_indices * bw)


def _flatten_pad(x: torch.Tensor, in_features: int, in_padded: int) -> torch.Tensor:
    return pad_columns(x.reshape(-1, in_features), in_padded)  # (B, C*bw)


def _finish(y: torch.Tensor, x: torch.Tensor, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    if y.shape[1] != out_features:
        y = y[:, :out_features]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out_features)


def balanced_block_linear(
    x: torch.Tensor,
    values_t: torch.Tensor,
    col_idx: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_features: int,
    *,
    dense_batch: int = DENSE_BATCH,
    dense_density: float = DENSE_DENSITY,
    weights_left: bool = False,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` for a balanced block-sparse ``W``.

    ``values_t (R, k*bw, bh)`` is the kernel layout (:meth:`BalancedBlock.values_t`),
    ``col_idx (R, k)`` int64 block columns; ``x (..., in_features)``; returns ``(..., out_features)``.
    From ``dense_batch`` rows on, if the stored density is at least ``dense_density``, the values
    are scattered into a dense matrix and one GEMM runs instead.

    The gathered product runs as ``gathered x (R, B, k*bw) @ blocks (R, k*bw, bh)`` or, with
    ``weights_left``, as ``blocks (R, bh, k*bw) @ gathered x^T (R, k*bw, B)`` (same result). The
    second is for exported graphs at a batch of 16 or so: ONNX Runtime's GEMM copies (packs) its
    right operand on every call, and on the left the weights stream once per call instead of being
    copied, while the input's slabs ``(bw, B)`` gather in fewer, longer pieces. Measured in ORT,
    one thread, on the exported ``model.onnx`` of a 2-layer GRU LM of hidden 1536 at 75% balanced
    32x32 blocks over 16 x 128 tokens (the recurrent products in its ``Scan``s; 7 runs each, alone
    on the machine, 2026-12-07): 391 ms against 480 ms input-left; at batch 1 it is
    slower (50.5 against 46.1 ms), the right operand being one column. ``compressor.export`` times
    both orders on the example input and keeps the faster.
    """
    R, kbw, bh = values_t.shape
    k = col_idx.shape[1]
    bw = kbw // k if k else 1
    C = -(-in_features // bw)
    x2 = _flatten_pad(x, in_features, C * bw)
    B = x2.shape[0]
    exporting = torch.compiler.is_exporting()
    if k == 0:
        y = x2.new_zeros(B, R * bh)
    elif B >= dense_batch and k >= dense_density * C and not exporting:
        dense = x2.new_zeros(R, C, bw, bh).index_put_(  # (R, C, bw, bh), kept blocks filled
            (torch.arange(R, device=x2.device).view(R, 1), col_idx), values_t.view(R, k, bw, bh)
        )
        y = x2 @ dense.permute(1, 2, 0, 3).reshape(C * bw, R * bh)  # (B, in_p) @ (in_p, out_p)
    elif weights_left:
        g = x2.t().reshape(C, bw, B).index_select(0, col_idx.view(-1)).reshape(R, kbw, B)  # (R, k*bw, B)
        y = torch.matmul(values_t.transpose(1, 2), g).reshape(R * bh, B).t()  # (R, bh, B) -> (B, out_p)
    else:
        g = x2.view(B, C, bw).index_select(1, col_idx.view(-1))  # (B, R*k, bw)
        g = g.view(B, R, kbw).transpose(0, 1).contiguous()  # (R, B, k*bw)
        y = torch.bmm(g, values_t).transpose(0, 1).reshape(B, R * bh)  # (R, B, bh) -> (B, out_p)
    return _finish(y, x, out_features, bias)


def bsr_linear(
    x: torch.Tensor,
    values_t: torch.Tensor,
    crow_indices: torch.Tensor,
    col_indices: torch.Tensor,
    row_indices: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    out_features: int,
    *,
    large_batch: int = LARGE_BATCH_BSR,
    dense_batch: int = DENSE_BATCH,
    dense_density: float = DENSE_DENSITY,
    bag_index: BagIndex | None = None,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` for a BSR ``W`` with blocks stored transposed: ``values_t (nnzb, bw, bh)``.

    ``crow_indices (R+1,)``, ``col_indices (nnzb,)`` and ``row_indices (nnzb,)`` (block row of every
    stored block) are int64. ``bag_index``: the module's cached :func:`bag_index_bsr` (built here
    when not given).
    """
    nnzb, bw, bh = values_t.shape
    R = crow_indices.numel() - 1
    C = -(-in_features // bw)
    x2 = _flatten_pad(x, in_features, C * bw)
    B = x2.shape[0]
    if nnzb == 0:
        y = x2.new_zeros(B, R * bh)
    elif B < large_batch and not torch.compiler.is_exporting():
        y = _bsr_embedding_bag(x2, values_t, bag_index or bag_index_bsr(crow_indices, col_indices, bw))
    elif B >= dense_batch and nnzb >= dense_density * R * C and not torch.compiler.is_exporting():
        dense = x2.new_zeros(R, C, bw, bh).index_put_((row_indices, col_indices), values_t)  # (R, C, bw, bh)
        y = x2 @ dense.permute(1, 2, 0, 3).reshape(C * bw, R * bh)  # (B, in_p) @ (in_p, out_p)
    else:
        xb = x2.view(B, C, bw).index_select(1, col_indices).transpose(0, 1)  # (nnzb, B, bw)
        prod = torch.bmm(xb, values_t)  # (nnzb, B, bh)
        y = x2.new_zeros(R, B, bh).index_add(0, row_indices, prod)  # (R, B, bh)
        y = y.transpose(0, 1).reshape(B, R * bh)
    return _finish(y, x, out_features, bias)


def _bsr_embedding_bag(x2: torch.Tensor, values_t: torch.Tensor, index: BagIndex) -> torch.Tensor:
    """One embedding_bag: table rows are the stored blocks' columns (length bh); bag = (example, block row)."""
    nnzb, bw, bh = values_t.shape
    B, L = x2.shape[0], index.cols.numel()
    R = index.offsets.numel() - 1
    psw = x2.index_select(1, index.cols).reshape(-1)  # (B*L,)
    rows, offsets = index.rows, index.offsets
    if B > 1:  # the same bags for every example, shifted by L per example
        rows = rows.repeat(B)
        shift = torch.arange(B, device=x2.device).view(B, 1) * L
        offsets = torch.cat([(offsets[:-1].view(1, R) + shift).view(-1), offsets.new_full((1,), B * L)])
    y = F.embedding_bag(rows, values_t.reshape(nnzb * bw, bh), offsets, mode="sum", per_sample_weights=psw,
                        include_last_offset=True)  # the end offset selects the fast fbgemm path
    return y.view(B, R * bh)  # (B*R, bh) -> (B, out_p)
