"""Triton gated block GEMV: per-example kept blocks, scaled by their gate values.

Hadifar et al., "Block-wise Dynamic Sparseness" (arXiv 2001.04686); docs/methods.md section 2. The
weight is cut into ``K = Ro * Ci`` blocks stored transposed, ``blocks_t (K, bw, bh)`` (block
``j * Ci + i``). Every example ``b`` has its own kept block list ``idx[b] (n,)`` and gate values
``g[b] (n,)`` (from :func:`compressor.kernels.select_blocks`), and

``y[b, rows of block row j] = sum over kept blocks (j, i) of g * W_[j][i] @ x[b, cols of block col i]``.

Kernel (:func:`_gated_kernel`), one program per (example, work item), fp32 accumulation:

* ``row`` mode (``idx`` comes row by row, ``n = Ro * k``): program ``(b, j)`` reads the ``k`` kept
  blocks of block row ``j`` and stores its ``bh`` outputs (deterministic, no atomics);
* ``global`` mode (kept blocks anywhere): program ``(b, p)`` computes kept block ``p`` and
  ``tl.atomic_add`` s its ``bh`` outputs into an fp32 buffer (summation order not fixed).

Each kept block is read exactly once (no pruned block is read): a memory-bound GEMV. The product
goes through ``tl.dot`` on a 16-row tile whose row 0 is ``g * x`` (``tl.dot`` needs 16 rows; the
tensor cores have the arithmetic to spare) and only row 0 is stored. Blocks must be powers of two
>= 16. The kernels use only ``triton.language`` builtins, no ``@triton.jit`` standard-library
helpers (``tl.sum``, ``tl.zeros``), which would not run under an interpreter switched on after
``import triton``.

Custom op: ``compressor::gated_block_gemv(x, blocks_t, idx, g, Ro, Ci, row_mode) -> y (B, Ro*bh)``
with a fake implementation. Backward: reference only -- autograd through
:func:`gated_block_gemv_reference` (torch gather + bmm + index_add), giving gradients for ``x``,
the blocks and the gate values ``g`` (hence the gate network); no Triton backward kernel.
"""

from __future__ import annotations

import torch

from ._checks import pad_columns
from .triton_common import LazyKernel, block_supported, dot_precision, interpret_upcast

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = ["gated_block_gemv", "gated_block_gemv_reference", "gated_block_linear_triton"]


def _gated_kernel(x_ptr, w_ptr, idx_ptr, g_ptr, y_ptr, Ci, stride_xb, stride_ib, stride_yb,
                  SLOTS: tl.constexpr, ATOMIC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                  UPCAST: tl.constexpr, IEEE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    offs_h = tl.arange(0, BH)
    offs_w = tl.arange(0, BW)
    lane = tl.arange(0, 16)  # tl.dot needs M >= 16: row 0 carries g * x, rows 1..15 are zero
    acc = tl.full((16, BH), 0.0, tl.float32)
    blk = tl.load(idx_ptr + b * stride_ib + p * SLOTS)
    for t in range(SLOTS):
        blk = tl.load(idx_ptr + b * stride_ib + p * SLOTS + t)
        gv = tl.load(g_ptr + b * stride_ib + p * SLOTS + t).to(tl.float32)
        col = blk % Ci
        xv = tl.load(x_ptr + b * stride_xb + col * BW + offs_w).to(tl.float32) * gv  # (BW,)
        a = tl.where(lane[:, None] == 0, xv[None, :], 0.0)  # (16, BW) fp32
        w = tl.load(w_ptr + blk * (BW * BH) + offs_w[:, None] * BH + offs_h[None, :])  # (BW, BH)
        if UPCAST:
            w = w.to(tl.float32)
        else:
            a = a.to(w_ptr.dtype.element_ty)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    row0 = lane[:, None] == 0  # only row 0 of the tile is real
    if ATOMIC:
        row = blk // Ci
        tl.atomic_add(y_ptr + b * stride_yb + row * BH + offs_h[None, :] + lane[:, None] * 0, acc, mask=row0)
    else:
        tl.store(y_ptr + b * stride_yb + p * BH + offs_h[None, :] + lane[:, None] * 0, acc, mask=row0)


_KERNEL = LazyKernel(_gated_kernel)


def gated_block_gemv_reference(x: torch.Tensor, blocks_t: torch.Tensor, idx: torch.Tensor, g: torch.Tensor,
                               Ro: int, Ci: int) -> torch.Tensor:
    """Pure-torch gated product: ``x (B, Ci*bw)``, ``blocks_t (K, bw, bh)``, ``idx``/``g (B, n)`` -> ``(B, Ro*bh)``.

    Accumulates in fp32, returns ``x.dtype``; differentiable w.r.t. ``x``, ``blocks_t`` and ``g``.
    """
    K, bw, bh = blocks_t.shape
    B, n = idx.shape
    cols = idx.remainder(Ci).unsqueeze(-1).expand(B, n, bw)  # (B, n, bw)
    xr = x.float().view(B, Ci, bw).gather(1, cols) * g.float().unsqueeze(-1)  # (B, n, bw)
    vals = blocks_t.float().index_select(0, idx.reshape(-1))  # (B*n, bw, bh)
    prod = torch.bmm(xr.reshape(B * n, 1, bw), vals).view(B * n, bh)  # (B*n, bh)
    rows = idx.div(Ci, rounding_mode="floor") + torch.arange(B, device=x.device).view(B, 1) * Ro  # (B, n)
    y = prod.new_zeros(B * Ro, bh).index_add(0, rows.reshape(-1), prod)  # (B*Ro, bh)
    return y.view(B, Ro * bh).to(x.dtype)


@torch.library.custom_op("compressor::gated_block_gemv", mutates_args=())
def gated_block_gemv(x: torch.Tensor, blocks_t: torch.Tensor, idx: torch.Tensor, g: torch.Tensor, Ro: int, Ci: int,
                     row_mode: bool) -> torch.Tensor:
    """Triton gated product (see the module docstring); ``row_mode``: ``idx`` holds ``n // Ro`` blocks per row, row by row."""
    if triton is None:
        raise RuntimeError("compressor::gated_block_gemv needs the 'triton' package")
    K, bw, bh = blocks_t.shape
    B, n = idx.shape
    if not block_supported(bw, bh):
        raise ValueError(f"Triton gated kernel needs block dims that are powers of two >= 16, got {bh}x{bw}")
    if K != Ro * Ci or x.shape != (B, Ci * bw) or g.shape != idx.shape:
        raise ValueError(f"inconsistent shapes: x {tuple(x.shape)}, blocks_t {tuple(blocks_t.shape)}, idx "
                         f"{tuple(idx.shape)}, g {tuple(g.shape)}, grid ({Ro}, {Ci})")
    if row_mode and n % Ro:
        raise ValueError(f"row mode needs the same number of kept blocks in each of the {Ro} block rows, got {n} in all")
    x, blocks_t = x.contiguous(), blocks_t.contiguous()
    idx, g = idx.contiguous(), g.contiguous()
    y = torch.zeros(B, Ro * bh, dtype=torch.float32, device=x.device)  # fp32 accumulator / atomics target
    if B and n:
        slots, items = (n // Ro, Ro) if row_mode else (1, n)
        _KERNEL[(B, items)](x, blocks_t, idx, g, y, Ci, x.stride(0), idx.stride(0), y.stride(0), SLOTS=slots,
                            ATOMIC=not row_mode, BH=bh, BW=bw, UPCAST=interpret_upcast(x.dtype),
                            IEEE=dot_precision(x.dtype) == "ieee")
    return y.to(x.dtype)


@gated_block_gemv.register_fake
def _(x, blocks_t, idx, g, Ro, Ci, row_mode):
    return x.new_empty(x.shape[0], Ro * blocks_t.shape[2])


def _setup_context(ctx, inputs, output):
    x, blocks_t, idx, g, Ro, Ci, _ = inputs
    ctx.save_for_backward(x, blocks_t, idx, g)
    ctx.grid = (Ro, Ci)


def _backward(ctx, grad):
    x, blocks_t, idx, g = ctx.saved_tensors
    with torch.enable_grad():
        xd, bd, gd = (t.detach().requires_grad_(True) for t in (x, blocks_t, g))
        y = gated_block_gemv_reference(xd, bd, idx, gd, *ctx.grid)
        gx, gb, gg = torch.autograd.grad(y, (xd, bd, gd), grad)
    return gx, gb, None, gg, None, None, None


gated_block_gemv.register_autograd(_backward, setup_context=_setup_context)


def gated_block_linear_triton(x: torch.Tensor, blocks_t: torch.Tensor, idx: torch.Tensor, g: torch.Tensor,
                              grid: tuple[int, int], mode: str, bias: torch.Tensor | None, in_features: int,
                              out_features: int) -> torch.Tensor:
    """Drop-in for :func:`compressor.kernels.gated_block_linear` (same arguments) on the Triton kernel."""
    if mode not in ("global", "row"):
        raise ValueError(f"mode must be 'global' or 'row', got {mode!r}")
    Ro, Ci = grid
    bw = blocks_t.shape[1]
    x = pad_columns(x, Ci * bw)  # (B, Ci*bw)
    y = gated_block_gemv(x, blocks_t, idx, g.to(x.dtype), Ro, Ci, mode == "row")  # (B, Ro*bh)
    if y.shape[1] != out_features:
        y = y[:, :out_features]
    if bias is not None:
        y = y + bias
    return y
