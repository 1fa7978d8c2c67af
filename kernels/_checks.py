"""Argument checks shared by the sparse formats, ops and modules.

Every check raises a ``ValueError`` or ``TypeError`` that names the offending argument, what it got
and what would be right; nothing here uses ``assert``.
"""

from __future__ import annotations

import torch

__all__ = [
    "SUPPORTED_DTYPES",
    "check_float_dtype",
    "check_weight_mask",
    "check_block",
    "pad_to_blocks",
    "pad_columns",
    "ceil_div",
]

#: Floating dtypes the sparse ops accept (bf16/fp16 run through the same torch ops on CPU).
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive integers."""
    return -(-a // b)


def check_float_dtype(name: str, tensor: torch.Tensor) -> None:
    """Raise TypeError unless ``tensor`` has one of :data:`SUPPORTED_DTYPES`."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise TypeError(f"{name} has unsupported dtype {tensor.dtype}; expected one of: {allowed}")


def check_block(name: str, block, *, dims: int = 2) -> tuple[int, ...]:
    """Normalise a block size: an int or a tuple of ``dims`` positive ints -> tuple."""
    if isinstance(block, int) and not isinstance(block, bool):
        block = (block,) * dims
    if (
        not isinstance(block, (tuple, list))
        or len(block) != dims
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise ValueError(f"{name} must be a positive int or a tuple of {dims} positive ints, got {block!r}")
    return tuple(int(b) for b in block)


def check_weight_mask(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Check a 2-D float weight and a bool mask of the same shape; return the mask (all True if None)."""
    check_float_dtype("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if mask is None:
        return torch.ones_like(weight, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    return mask.to(weight.device)


def pad_to_blocks(t: torch.Tensor, block: tuple[int, int], value=0) -> torch.Tensor:
    """Pad a 2-D tensor at the bottom/right so both sizes are multiples of ``block``."""
    rows, cols = t.shape
    pr = ceil_div(rows, block[0]) * block[0] - rows
    pc = ceil_div(cols, block[1]) * block[1] - cols
    if pr == 0 and pc == 0:
        return t
    out = torch.full((rows + pr, cols + pc), value, dtype=t.dtype, device=t.device)
    out[:rows, :cols] = t
    return out


def pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """``t (..., n)`` zero padded on the right to ``width`` columns (an input padded to its block
    grid's width: the padded columns meet zero weights); ``t`` itself when it is that wide."""
    return t if t.shape[-1] == width else torch.nn.functional.pad(t, (0, width - t.shape[-1]))
