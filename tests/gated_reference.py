"""Independent dense reference for input-dependent block gating (Hadifar et al.), shared by the
kernel tests and the dynamic_gate pass tests.

Per example, a dense ``(out, in)`` gate matrix holds ``g = K s / sum(kept s)`` (``s`` =
softplus of the gate's output, ``K`` = all blocks) on the kept blocks and 0 elsewhere; kept
blocks are the top ``ceil(keep * n)`` scores over all blocks (``global``) or in each block row
(``row``). Built block by block with plain torch, differentiable in the gate and the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gate_matrix", "gated_linear_reference"]


def gate_matrix(x, gate, shape, block, keep, mode):
    """(B, out, in) gate matrices for inputs ``x (B, in)``."""
    (out, inp), (bh, bw) = shape, block
    Ro, Ci = math.ceil(out / bh), math.ceil(inp / bw)
    K = Ro * Ci
    s = F.softplus(gate(x))  # (B, K)
    mats = []
    for b in range(x.shape[0]):
        sb = s[b].view(Ro, Ci)
        if mode == "global":
            k = math.ceil(keep * K - 1e-9)
            kept = torch.zeros(K, dtype=torch.bool)
            kept[torch.argsort(s[b], descending=True, stable=True)[:k]] = True
            kept = kept.view(Ro, Ci)
        else:
            k = math.ceil(keep * Ci - 1e-9)
            kept = torch.zeros(Ro, Ci, dtype=torch.bool)
            for j in range(Ro):
                kept[j, torch.argsort(sb[j], descending=True, stable=True)[:k]] = True
        grid = torch.where(kept, sb * K / sb[kept].sum(), torch.zeros_like(sb))  # (Ro, Ci)
        mats.append(grid.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:out, :inp])
    return torch.stack(mats)  # (B, out, in)


def gated_linear_reference(x, weight, bias, gate, block, keep, mode):
    """``y_b = (G_b * W) x_b + bias`` with :func:`gate_matrix`; ``x (B, in)`` -> ``(B, out)``."""
    G = gate_matrix(x, gate, tuple(weight.shape), block, keep, mode)
    y = torch.einsum("boi,oi,bi->bo", G, weight, x)
    return y + bias if bias is not None else y
