"""Triton block-sparse x dense GEMM / GEMV (``y = x @ W_sparse^T``) for the balanced and BSR layouts.

Narang et al., "Block-Sparse Recurrent Neural Networks" (arXiv 1711.02782); the balanced layout
of docs/methods.md sections 1 and 2. One kernel serves both layouts: a balanced matrix is a BSR matrix whose
block rows all hold ``k`` blocks (``crow = arange(R + 1) * k``).

Kernel (:func:`_block_rows_kernel`): program ``(m, r, s)`` computes the ``BM x bh`` output tile of
token tile ``m`` and block row ``r``, looping over its stored blocks ``j``: load the ``BM x bw``
slice of ``x`` at block column ``col[j]`` and the transposed block ``values_t[j] (bw, bh)``, and
``tl.dot`` them into an fp32 accumulator. Blocks 16/32/64 (powers of two >= 16, a ``tl.dot``
limit); fp32 (tf32 only where ``torch.backends.cuda.matmul.allow_tf32``), fp16, bf16.

Small batches (``B <= 16``, the GEMV path) are memory bound: every stored block is read once by
exactly one program. With few block rows (``R`` programs cannot fill the GPU) the stored blocks of
a row are split ``S`` ways (split-K, grid axis ``s``); each split writes an fp32 partial
``(S, B, out)`` and the partials are summed after the kernel (deterministic, no atomics).

Custom op: ``compressor::block_sparse_mm(x, values_t, col_indices, crow_indices, split) -> y``
(``torch.library.custom_op`` with a fake implementation, so ``torch.compile`` / ``torch.export`` see
one op). Backward: reference only -- autograd through :func:`block_sparse_mm_reference` (pure
torch gather + bmm + index_add), registered with ``register_autograd``; no Triton backward kernel.

Inputs are zero padded to the block grid and outputs cropped (:func:`block_sparse_linear_triton`),
so any ``in_features`` / ``out_features`` / token count works.
"""

from __future__ import annotations

import torch

from ._checks import pad_columns
from .triton_common import LazyKernel, block_supported, dot_precision, interpret_upcast

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch reference still works; Triton launches report the missing package
    triton = tl = None

__all__ = [
    "block_sparse_mm",
    "block_sparse_mm_reference",
    "block_sparse_linear_triton",
    "balanced_crow",
    "choose_split",
    "GEMV_MAX_BATCH",
]

#: Up to this many tokens the op takes the GEMV path (16-row tiles, split-K over stored blocks).
GEMV_MAX_BATCH = 16


def _block_rows_kernel(x_ptr, v_ptr, col_ptr, crow_ptr, y_ptr, B, stride_xb, stride_ys, stride_yb,
                       SPLIT: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                       UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    r = tl.program_id(1)
    s = tl.program_id(2)
    start = tl.load(crow_ptr + r)
    end = tl.load(crow_ptr + r + 1)
    chunk = (end - start + SPLIT - 1) // SPLIT
    lo = start + s * chunk
    hi = tl.minimum(lo + chunk, end)
    offs_m = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    m_ok = offs_m < B
    offs_w = tl.arange(0, BW)
    offs_h = tl.arange(0, BH)
    acc = tl.full((BM, BH), 0.0, tl.float32)
    for j in range(lo, hi):
        c = tl.load(col_ptr + j)
        a = tl.load(x_ptr + offs_m[:, None] * stride_xb + (c * BW + offs_w)[None, :], mask=m_ok[:, None], other=0.0)
        w = tl.load(v_ptr + j * (BW * BH) + offs_w[:, None] * BH + offs_h[None, :])  # (BW, BH)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    y = y_ptr + s * stride_ys + offs_m[:, None] * stride_yb + (r * BH + offs_h)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None])


_KERNEL = LazyKernel(_block_rows_kernel)


def balanced_crow(R: int, k: int, device) -> torch.Tensor:
    """Row pointers of a balanced layout seen as BSR: ``arange(R + 1) * k`` (int64)."""
    return torch.arange(R + 1, device=device, dtype=torch.int64) * k


def choose_split(B: int, R: int, max_row_blocks: int, device: torch.device) -> int:
    """Split-K factor: 1 for GEMM; for the GEMV path enough splits for ~2 programs per SM."""
    if B > GEMV_MAX_BATCH or max_row_blocks < 2:
        return 1
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(max_row_blocks, -(-2 * sms // max(1, R)), 16))
    return 2  # interpreter: exercise the split path


def block_sparse_mm_reference(x: torch.Tensor, values_t: torch.Tensor, col_indices: torch.Tensor,
                              crow_indices: torch.Tensor) -> torch.Tensor:
    """Pure-torch ``x (B, C*bw) @ W^T -> (B, R*bh)``; ``values_t (nnzb, bw, bh)`` blocks transposed.

    Accumulates in fp32 and returns ``x.dtype``; differentiable w.r.t. ``x`` and ``values_t``.
    """
    nnzb, bw, bh = values_t.shape
    R = crow_indices.numel() - 1
    B, cols = x.shape
    rows = torch.repeat_interleave(torch.arange(R, device=x.device), crow_indices.diff())  # (nnzb,)
    xb = x.float().view(B, cols // bw, bw).index_select(1, col_indices).transpose(0, 1)  # (nnzb, B, bw)
    prod = torch.bmm(xb, values_t.float())  # (nnzb, B, bh)
    y = prod.new_zeros(R, B, bh).index_add(0, rows, prod)  # (R, B, bh)
    return y.transpose(0, 1).reshape(B, R * bh).to(x.dtype)


def _check_args(x, values_t, col_indices, crow_indices) -> None:
    if x.dim() != 2 or values_t.dim() != 3:
        raise ValueError(f"x must be (B, C*bw) and values_t (nnzb, bw, bh); got {tuple(x.shape)}, {tuple(values_t.shape)}")
    if x.dtype != values_t.dtype or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"x and values_t must share one of float32/float16/bfloat16, got {x.dtype}, {values_t.dtype}")
    _, bw, bh = values_t.shape
    if not block_supported(bw, bh):
        raise ValueError(f"Triton block-sparse kernel needs block dims that are powers of two >= 16, got {bh}x{bw}")
    if x.shape[1] % bw:
        raise ValueError(f"x has {x.shape[1]} columns, not a multiple of the block width {bw} (pad it first)")
    if col_indices.dtype != torch.int64 or crow_indices.dtype != torch.int64:
        raise TypeError("col_indices and crow_indices must be int64")


@torch.library.custom_op("compressor::block_sparse_mm", mutates_args=())
def block_sparse_mm(x: torch.Tensor, values_t: torch.Tensor, col_indices: torch.Tensor,
                    crow_indices: torch.Tensor, split: int = 0) -> torch.Tensor:
    """Triton ``x (B, C*bw) @ W^T -> (B, R*bh)`` for BSR ``W`` with transposed blocks ``values_t (nnzb, bw, bh)``.

    ``split``: split-K factor (0: :func:`choose_split`). Runs on CUDA, or on CPU under
    ``TRITON_INTERPRET=1``.
    """
    if triton is None:
        raise RuntimeError("compressor::block_sparse_mm needs the 'triton' package")
    _check_args(x, values_t, col_indices, crow_indices)
    x = x.contiguous()
    values_t = values_t.contiguous()
    nnzb, bw, bh = values_t.shape
    R = crow_indices.numel() - 1
    B = x.shape[0]
    if split <= 0:
        counts = crow_indices.diff()
        split = choose_split(B, R, int(counts.max()) if R else 0, x.device)
    bm = 16 if B <= 16 else (32 if B <= 32 else 64)
    out_dtype = x.dtype if split == 1 else torch.float32
    y = torch.empty(split, B, R * bh, dtype=out_dtype, device=x.device)  # (S, B, out_p)
    if B and R:
        grid = (triton.cdiv(B, bm), R, split)
        _KERNEL[grid](x, values_t, col_indices.contiguous(), crow_indices.contiguous(), y, B, x.stride(0),
                      y.stride(0), y.stride(1), SPLIT=split, BM=bm, BH=bh, BW=bw,
                      UPCAST=interpret_upcast(x.dtype),
                      IEEE=dot_precision(x.dtype) == "ieee")
    if split == 1:
        return y[0]
    return y.sum(0).to(x.dtype)  # (B, out_p)


@block_sparse_mm.register_fake
def _(x, values_t, col_indices, crow_indices, split=0):
    return x.new_empty(x.shape[0], (crow_indices.shape[0] - 1) * values_t.shape[2])


def _setup_context(ctx, inputs, output):
    x, values_t, col_indices, crow_indices, _ = inputs
    ctx.save_for_backward(x, values_t, col_indices, crow_indices)


def _backward(ctx, grad):
    x, values_t, col_indices, crow_indices = ctx.saved_tensors
    with torch.enable_grad():
        xd = x.detach().requires_grad_(True)
        vd = values_t.detach().requires_grad_(True)
        y = block_sparse_mm_reference(xd, vd, col_indices, crow_indices)
        gx, gv = torch.autograd.grad(y, (xd, vd), grad)
    return gx, gv, None, None, None


block_sparse_mm.register_autograd(_backward, setup_context=_setup_context)


def block_sparse_linear_triton(x: torch.Tensor, values_t: torch.Tensor, col_indices: torch.Tensor,
                               crow_indices: torch.Tensor | None, bias: torch.Tensor | None, in_features: int,
                               out_features: int, *, split: int = 0) -> torch.Tensor:
    """``y = x @ W.T + bias`` through :func:`block_sparse_mm`, for either layout.

    Balanced: ``values_t (R, k*bw, bh)``, ``col_indices (R, k)``, ``crow_indices=None``. BSR:
    ``values_t (nnzb, bw, bh)``, ``col_indices (nnzb,)``, ``crow_indices (R+1,)``. ``x (..., in)``
    is zero padded to the block grid; the output is cropped to ``out_features``.
    """
    if crow_indices is None:  # balanced layout -> BSR view, no copy
        R, kbw, bh = values_t.shape
        k = col_indices.shape[1]
        bw = kbw // k if k else 16
        values_t = values_t.reshape(R * k, bw, bh)  # (R*k, bw, bh)
        crow_indices = balanced_crow(R, k, values_t.device)
        col_indices = col_indices.reshape(-1)
    bw = values_t.shape[1]
    C = -(-in_features // bw)
    x2 = pad_columns(x.reshape(-1, in_features), C * bw)  # (B, C*bw)
    y = block_sparse_mm(x2, values_t, col_indices, crow_indices, split)  # (B, R*bh)
    if y.shape[1] != out_features:
        y = y[:, :out_features]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out_features)
