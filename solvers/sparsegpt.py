"""One-shot pruning with second-order weight updates (SparseGPT) and the Wanda score.

SparseGPT: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", arXiv 2301.00774. For a layer ``y = W x`` and calibration inputs ``X`` (N x in), the
layer-wise problem ``min ||X W^T - X W'^T||`` over sparse ``W'`` is approached column by column
with optimal brain surgeon (OBS) updates: pruning weight ``w_ij`` (column j, after columns < j
are fixed) costs ``w_ij^2 / [H_F^-1]_jj`` and is compensated on the remaining columns by
``-w_ij / [H_F^-1]_jj * [H_F^-1]_{j, j:}`` with ``H = X^T X``. The successive inverses
``H_F^-1`` (columns < j eliminated) are the rows of the upper Cholesky factor ``U`` of ``H^-1``
(``[H_F^-1]_{j, j:} = U_jj U_{j, j:}``), so one factorisation serves every column. Columns are
handled in blocks of ``blocksize`` (128): updates inside the block are applied at once per
column, updates to later columns lazily per block (one matmul). The mask is chosen inside each
block just before it is processed ("adaptive mask selection", section 3.3 of the paper), from
the OBS saliency ``w^2 / U_jj^2`` of the weights as updated so far; N:M chooses, per row, N of
every M consecutive input columns by the same saliency when the group's first column is reached;
transposable N:M (Hubara et al.) chooses that M-column strip with the transposable N:M solvers on
the same saliencies: every M x M tile of the strip keeps N per row and per column. The tiles of a
strip are whole tiles of the matrix, so the result is a transposable N:M mask of the whole weight.

Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", arXiv
2306.11695: score ``|W_ij| * ||X_j||_2`` compared within each output row, no weight update.

Everything here is pure tensor math: no model access (calibration lives in the passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._checks import check_nm, check_prior, check_weight
from .allocation import proportional_counts, row_block_counts
from .nm import nm_mask
from .topk import rowwise_topk_mask
from .transposable import transposable_nm_mask

__all__ = ["SparseGPTResult", "hessian", "damped_inverse_cholesky", "sparsegpt_prune", "obs_group_saliency",
           "wanda_scores", "wanda_mask", "output_error", "HessianError"]


class HessianError(ValueError):
    """The damped Hessian could not be factorised (even after raising the damping)."""


@dataclass
class SparseGPTResult:
    """The pruned weight (zero where ``mask`` is False), the mask, and how the solve went."""

    weight: torch.Tensor
    mask: torch.Tensor
    #: damping added to the diagonal, relative to mean(diag H) (larger than asked if raised)
    damping: float
    notes: list[str] = field(default_factory=list)
    #: input columns never active in the calibration data (diag H = 0): their weights are zeroed
    dead_columns: int = 0


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``X^T X / N`` in float64 for calibration rows ``x`` (N x in)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return x.T @ x / max(x.shape[0], 1)


def damped_inverse_cholesky(h: torch.Tensor, percdamp: float, retries: int = 6) -> tuple[torch.Tensor, float, list[str]]:
    """Upper Cholesky factor ``U`` of ``(H + d * mean(diag H) * I)^-1`` (``U^T U = H^-1``).

    ``d`` starts at ``percdamp``; when a factorisation fails (a singular or badly conditioned
    ``H``: duplicate or collinear inputs, fewer calibration rows than columns) it is raised
    tenfold (from at least 1e-4) up to ``retries`` times and a note says so. Returns
    ``(U, d, notes)``; raises :class:`HessianError` if every attempt fails.
    """
    h = h.double()
    scale = float(h.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp, notes = float(percdamp), []
    for attempt in range(retries + 1):
        chol, info = torch.linalg.cholesky_ex(h + damp * scale * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(u).all()):
                if attempt:
                    notes.append(f"damping raised from {percdamp:g} to {damp:g} x mean(diag H): "
                                 "the Cholesky factorisation of H failed below it")
                return u, damp, notes
        if attempt == retries:
            break
        damp = max(damp, 1e-5) * 10
    raise HessianError(f"the Hessian X^T X is not positive definite even with damping {damp:g} x mean(diag H)")


def _block_mask(scores: torch.Tensor, prune: int | torch.Tensor, ranking: str) -> torch.Tensor:
    """Pruned (True) entries of one column block: the ``prune`` lowest scores of the block
    (``ranking: layer``), or of every row (``row``; ``prune`` one count per row)."""
    rows, cols = scores.shape
    if ranking == "row":
        pruned = ~rowwise_topk_mask(scores, cols - prune)
    else:
        prune = int(prune)
        flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        if prune:
            flat[torch.argsort(scores.reshape(-1), stable=True)[:prune]] = True
        pruned = flat.reshape(rows, cols)
    return pruned


def sparsegpt_prune(weight: torch.Tensor, h: torch.Tensor, *, sparsity: float = 0.5, n: int = 0, m: int = 0,
                    ranking: str = "layer", blocksize: int = 128, percdamp: float = 0.01,
                    prior: torch.Tensor | None = None, prune: int | None = None, transposable: bool = False,
                    solver: str = "exact") -> SparseGPTResult:
    """Prune ``weight`` (out x in) to ``sparsity`` (unstructured) or N:M with OBS updates (module docstring).

    ``h``: the Hessian ``X^T X`` (any positive scale; :func:`hessian`). ``n``/``m``: N:M along
    the input dimension when ``n > 0`` (``sparsity`` is then ignored; a last partial group of r
    columns keeps min(n, r), as :func:`compressor.solvers.nm_mask`). ``ranking``: unstructured
    sparsity per column block over the whole block (``layer``, the reference implementation) or
    in every row of it (``row``). ``prior``: an existing mask; its pruned entries are pruned
    first (they stay pruned whenever the pattern allows). ``prune`` (unstructured only): prune exactly
    this many weights instead of ``sparsity`` of each block or row (a layer-wise allocation's count),
    spread over the column blocks (and, ``ranking: row``, over the rows) in proportion to their sizes
    (:func:`compressor.solvers.allocation.proportional_counts`). ``transposable`` (with ``n``): every
    m x m tile keeps N per row and per column, each m-column strip solved by ``solver`` (a name of
    :data:`compressor.solvers.SOLVER_NAMES`) when the sweep reaches it; ``prior``'s pruned entries stay
    pruned where the tiles allow. Computation in float64; the result has
    the weight's dtype and is exactly zero where the mask is False.
    """
    check_weight(weight)
    check_prior(prior, weight)
    if transposable and not n:
        raise ValueError("transposable applies to N:M (n > 0)")
    if n:
        check_nm(n, m)
        if prune is not None:
            raise ValueError("prune (a count of weights) applies to unstructured sparsity, not N:M")
    elif prune is not None:
        if not 0 <= int(prune) < weight.numel():
            raise ValueError(f"prune must be in [0, {weight.numel()}), got {prune}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if ranking not in ("layer", "row"):
        raise ValueError(f"ranking must be 'layer' or 'row', got {ranking!r}")
    rows, cols = weight.shape
    if tuple(h.shape) != (cols, cols):
        raise ValueError(f"the Hessian has shape {tuple(h.shape)}, expected ({cols}, {cols}) for weight {tuple(weight.shape)}")
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    if n:  # N:M groups must not straddle a block boundary
        blocksize = max(m, blocksize - blocksize % m)
    h = h.double().clone()
    w = weight.detach().double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u, damp, notes = damped_inverse_cholesky(h, percdamp)
    forced = None if prior is None else ~prior.to(torch.bool)  # pruned before: prune first
    mask = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    counts = None if n else _block_counts(rows, cols, blocksize, sparsity, ranking, prune)
    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d1 = u1.diagonal()
        pruned = torch.zeros(rows, count, dtype=torch.bool, device=w.device)
        if not n:
            scores = w1.pow(2) / d1.pow(2)
            if forced is not None:
                scores = scores.masked_fill(forced[:, i1:i2], -1.0)
            pruned = _block_mask(scores, counts[b], ranking)
            if forced is not None:
                pruned |= forced[:, i1:i2]
        for i in range(count):
            if n and i % m == 0:
                g = min(m, count - i)
                saliency = w1[:, i:i + g].pow(2) / d1[i:i + g].pow(2)
                strip_forced = None if forced is None else forced[:, i1 + i:i1 + i + g]
                if transposable:  # a last strip narrower than m too: its columns keep n of every m rows
                    pruned[:, i:i + g] = ~_transposable_strip(saliency, n, m, solver, strip_forced)
                elif g > n:
                    if strip_forced is not None:
                        saliency = saliency.masked_fill(strip_forced, -1.0)
                    idx = torch.argsort(saliency, dim=1, stable=True)[:, :g - n]
                    pruned[:, i:i + g].scatter_(1, idx, True)
            col = w1[:, i]
            q = col.masked_fill(pruned[:, i], 0.0)
            q1[:, i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        mask[:, i1:i2] = ~pruned
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w = w.masked_fill(~mask, 0.0)
    n_dead = int(dead.sum())
    if n_dead:
        notes.append(f"{n_dead} input column(s) are zero in every calibration row: their weights were zeroed")
    return SparseGPTResult(w.to(weight.dtype), mask, damp, notes, n_dead)


def _transposable_strip(scores: torch.Tensor, n: int, m: int, solver: str, forced: torch.Tensor | None) -> torch.Tensor:
    """Kept entries of an m-column strip (rows x m, every m x m tile transposable N:M) on its saliencies;
    ``forced``: entries pruned before, which stay pruned where the tiles allow."""
    if forced is not None:
        scores = scores.masked_fill(forced, 0.0)
    return transposable_nm_mask(scores, n, m, method=solver, prior=None if forced is None else ~forced)


def obs_group_saliency(weight: torch.Tensor, h: torch.Tensor, width: int, percdamp: float = 0.01) -> torch.Tensor:
    """The OBS cost of removing each row's run of ``width`` consecutive input columns together,
    ``w_B [(H^-1)_BB]^-1 w_B^T`` (B: columns ``k*width ... (k+1)*width - 1``; the last run may be
    shorter), spread evenly over the run's entries: an (out x in) float64 score whose block sums
    rank blocks by what removing them costs (a block pattern's mask is chosen on it)."""
    check_weight(weight)
    h = h.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    u, _, _ = damped_inverse_cholesky(h, percdamp)
    hinv = u.T @ u
    w = weight.detach().double()
    out = torch.empty_like(w)
    for c0 in range(0, w.shape[1], width):
        c1 = min(c0 + width, w.shape[1])
        wb = w[:, c0:c1]
        cost = (wb @ torch.linalg.inv(hinv[c0:c1, c0:c1]) * wb).sum(1)  # (out,)
        out[:, c0:c1] = (cost / (c1 - c0)).unsqueeze(1)
    return out


def _block_counts(rows: int, cols: int, blocksize: int, sparsity: float, ranking: str, prune: int | None) -> list:
    """What each column block prunes: a count per block (``ranking: layer``) or a per-row count tensor per
    block (``row``). Without ``prune``, ``sparsity`` of each block (or of each row in it), rounded."""
    widths = [min(blocksize, cols - i1) for i1 in range(0, cols, blocksize)]
    if prune is None:
        if ranking == "row":
            return [torch.full((rows,), round(sparsity * w), dtype=torch.int64) for w in widths]
        return [round(sparsity * rows * w) for w in widths]
    if ranking == "row":
        per_row = proportional_counts(int(prune), [cols] * rows)
        table = row_block_counts(per_row, widths)
        return [table[:, b] for b in range(len(widths))]
    return [int(c) for c in proportional_counts(int(prune), [rows * w for w in widths])]


def wanda_scores(weight: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` (Sun et al.): ``x_norm`` is the L2 norm of every input column."""
    check_weight(weight)
    if x_norm.shape != (weight.shape[1],):
        raise ValueError(f"x_norm has shape {tuple(x_norm.shape)}, expected ({weight.shape[1]},)")
    return weight.detach().abs().double() * x_norm.double().unsqueeze(0)


def wanda_mask(weight: torch.Tensor, x_norm: torch.Tensor, *, sparsity: float = 0.5, n: int = 0, m: int = 0,
               prior: torch.Tensor | None = None, prune: int | None = None) -> torch.Tensor:
    """Wanda mask: per output row, keep the largest ``|W_ij| * ||X_j||`` (``sparsity`` of every row
    pruned), or N:M of them when ``n > 0``. ``prior``: pruned entries of an existing mask stay pruned
    (unstructured) or are pruned first (N:M). ``prune`` (unstructured only): prune exactly this many
    weights of the layer instead, spread over the rows as evenly as they go (rows differ by at most one)."""
    scores = wanda_scores(weight, x_norm)
    check_prior(prior, weight)
    if n:
        check_nm(n, m)
        if prune is not None:
            raise ValueError("prune (a count of weights) applies to unstructured sparsity, not N:M")
        if prior is not None:  # nm_mask prefers the prior's kept entries
            return nm_mask(scores, n, m, prior=prior)
        return nm_mask(scores, n, m)
    if prune is not None:
        if not 0 <= int(prune) < weight.numel():
            raise ValueError(f"prune must be in [0, {weight.numel()}), got {prune}")
    elif not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if prior is not None:
        scores = scores.masked_fill(~prior.to(torch.bool), -1.0)
    rows, cols = weight.shape
    if prune is not None:
        return rowwise_topk_mask(scores, cols - proportional_counts(int(prune), [cols] * rows))
    return rowwise_topk_mask(scores, cols - round(sparsity * cols))


def output_error(h: torch.Tensor, w_ref: torch.Tensor, w: torch.Tensor) -> float:
    """Relative calibration output error ``||X W_ref^T - X W^T||_F / ||X W_ref^T||_F`` from ``H = X^T X``
    (any positive scale): ``trace(D H D^T) / trace(W_ref H W_ref^T)`` with ``D = W_ref - W``, square-rooted."""
    h = h.double()
    d = (w_ref.double() - w.double())
    num = float((d @ h * d).sum().clamp_min(0.0))
    den = float((w_ref.double() @ h * w_ref.double()).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0
