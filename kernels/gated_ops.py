"""Gated block linear: per-example top-k of weight blocks (block-wise dynamic sparseness).

Hadifar, Deleu, Develder, Demeester, "Block-wise Dynamic Sparseness" (arXiv 2001.04686); see
docs/methods.md section 2. ``W (out, in)`` is cut into ``bh x bw`` blocks, ``K = Ro * Ci`` in all
(block index ``j * Ci + i`` for block row ``j``, block column ``i``). A gate network (one Linear,
input -> K scores) scores the blocks for every example; the op keeps, per example,

* ``mode="global"``: the top ``k`` scores over the whole matrix (the paper), or
* ``mode="row"``: the top ``k_row`` scores in every block row (static shapes, balanced work),

and computes ``y_j = sum over kept blocks (j, i) of g_ji * W_[j][i] x_[i]``.

Gate values: raw scores can be negative, so the score is made positive with ``softplus`` (our
documented choice, docs/methods.md section 2, step 3); the kept scores are rescaled to average 1 over all ``K`` blocks,
``g = s_kept / (sum(s_kept) / K)``, in both modes. Training is plain backprop through ``g`` (so
through the gate network) and through the kept blocks' weights; the hard top-k itself has no
gradient (no straight-through estimator), as in the paper.

Kernel: blocks are stored ``(K, bw, bh)`` (each block transposed), i.e. the rows of a table of
column segments ``(K*bw, bh)``. For inference on CPU (fp32/fp64, nothing needing a gradient) the
default is a small compiled C kernel that streams the kept blocks (:mod:`.native`, ``path="native"``;
1.4-2x faster than the ``ebag`` path below in ``compress bench kernels --sections gated``). Otherwise one
``F.embedding_bag`` (``path="ebag"``) gathers exactly the kept
blocks' columns and sums them weighted by ``x * g`` (per-sample weights): no copy of the kept
values, no padding. While exporting (``torch.compiler.is_exporting()``), or with
``path="bmm"``, the op gathers the kept blocks with ``index_select`` and uses a batched matmul
(ONNX Gather / MatMul / TopK / ScatterND).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import pad_columns
from .native import gated_block_matvec, native_eligible

__all__ = ["GATE_MODES", "PATHS", "gate_values", "select_blocks", "gated_block_linear", "kept_blocks"]

GATE_MODES = ("global", "row")
#: Compute paths of :func:`gated_block_linear`.
PATHS = ("auto", "native", "ebag", "bmm")


def kept_blocks(keep: float, grid: tuple[int, int], mode: str) -> int:
    """Number of kept blocks per example (``global``) or per block row (``row``): ``ceil(keep * n)``."""
    if mode not in GATE_MODES:
        raise ValueError(f"mode must be one of {GATE_MODES}, got {mode!r}")
    if not (isinstance(keep, (int, float)) and 0.0 < float(keep) <= 1.0):
        raise ValueError(f"keep (kept fraction of blocks) must be in (0, 1], got {keep!r}")
    n = grid[0] * grid[1] if mode == "global" else grid[1]
    return max(1, min(n, math.ceil(float(keep) * n - 1e-9)))


def gate_values(logits: torch.Tensor) -> torch.Tensor:
    """Positive block scores from the gate network's output: ``softplus(logits)``."""
    return F.softplus(logits)


def select_blocks(scores: torch.Tensor, k: int, grid: tuple[int, int], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard per-example top-k of positive ``scores (B, K)``.

    Returns ``idx (B, n_kept)`` int64 block indices and ``g (B, n_kept)`` gate values rescaled to
    average 1 over all K blocks. In ``row`` mode ``n_kept = Ro * k`` and the blocks come row by
    row (``idx[:, j*k:(j+1)*k]`` lie in block row ``j``).
    """
    Ro, Ci = grid
    B, K = scores.shape
    if mode == "global":
        v, idx = scores.topk(k, dim=1)  # (B, k)
    elif mode == "row":
        v, ci = scores.view(B, Ro, Ci).topk(k, dim=2)  # (B, Ro, k)
        idx = (ci + torch.arange(Ro, device=scores.device).view(1, Ro, 1) * Ci).reshape(B, Ro * k)
        v = v.reshape(B, Ro * k)
    else:
        raise ValueError(f"mode must be one of {GATE_MODES}, got {mode!r}")
    # v / (sum / K), not v * (K / sum): a scalar divided by a tensor goes through Python (Tensor.__rdiv__)
    g = v / (v.sum(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny) / K)
    return idx, g


def gated_block_linear(
    x: torch.Tensor,
    blocks_t: torch.Tensor,
    idx: torch.Tensor,
    g: torch.Tensor,
    grid: tuple[int, int],
    mode: str,
    bias: torch.Tensor | None,
    in_features: int,
    out_features: int,
    *,
    path: str = "auto",
) -> torch.Tensor:
    """Apply the kept blocks: ``x (B, in)``, ``blocks_t (K, bw, bh)``, ``idx``/``g`` from :func:`select_blocks`.

    ``path``: ``auto`` (the native kernel where :func:`~compressor.kernels.native.native_eligible`,
    else embedding_bag; bmm while exporting), ``native``, ``ebag`` or ``bmm``.
    Returns ``(B, out_features)``.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "auto" and torch.compiler.is_exporting():
        path = "bmm"
    if path in ("auto", "native"):
        if path == "native" or native_eligible(x, blocks_t, g):
            return _finish(gated_block_matvec(pad_columns(x, grid[1] * blocks_t.shape[1]), blocks_t,
                                              idx, g, grid), out_features, bias)
        path = "ebag"
    K, bw, bh = blocks_t.shape
    Ro, Ci = grid
    B, n = idx.shape
    x = pad_columns(x, Ci * bw)  # (B, Ci*bw)
    xrow = idx.remainder(Ci)  # (B, n) block column of every kept block
    if B > 1:
        xrow = xrow + torch.arange(B, device=x.device).view(B, 1) * Ci  # row of x.view(B*Ci, bw)
    xw = x.reshape(B * Ci, bw).index_select(0, xrow.view(-1)) * g.reshape(B * n, 1)  # (B*n, bw)
    if path == "bmm":
        vals = blocks_t.index_select(0, idx.reshape(-1))  # (B*n, bw, bh)
        out = torch.bmm(xw.view(B * n, 1, bw), vals).view(B * n, bh)  # (B*n, bh)
        if mode == "row":
            out = out.view(B * Ro, n // Ro, bh).sum(dim=1)  # (B*Ro, bh)
    else:
        span = torch.arange(bw, device=x.device)
        rows = (idx.view(B * n, 1) * bw + span).view(-1)  # (B*n*bw,) table row of each kept column
        per_bag = (n // Ro) * bw if mode == "row" else bw
        offsets = torch.arange(0, B * n * bw + 1, per_bag, device=x.device)  # with the end offset:
        # include_last_offset=True takes torch's fast (fbgemm) CPU kernel, measured 2-3x faster
        out = F.embedding_bag(rows, blocks_t.reshape(K * bw, bh), offsets, mode="sum",
                              per_sample_weights=xw.view(-1), include_last_offset=True)
    if mode == "row":
        y = out  # (B*Ro, bh)
    else:
        y = _scatter_rows(out, idx, Ro, Ci)
    return _finish(y.reshape(B, Ro * bh), out_features, bias)


def _finish(y: torch.Tensor, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """Block-row outputs ``(B, Ro*bh)`` cut to ``out_features``, plus the bias."""
    if y.shape[1] != out_features:
        y = y[:, :out_features]
    return y + bias if bias is not None else y


def _scatter_rows(prod: torch.Tensor, idx: torch.Tensor, Ro: int, Ci: int) -> torch.Tensor:
    """Sum per-block products ``(B*n, bh)`` into their block rows -> ``(B*Ro, bh)``."""
    B, n = idx.shape
    rows = idx.div(Ci, rounding_mode="floor")  # (B, n)
    if B > 1:
        rows = rows + torch.arange(B, device=idx.device).view(B, 1) * Ro
    return prod.new_zeros(B * Ro, prod.shape[1]).index_add(0, rows.view(-1), prod)
