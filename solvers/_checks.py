"""Argument checks shared by the solvers: clear errors that name the offending argument."""

from __future__ import annotations

import torch

__all__ = ["check_weight", "check_nm", "check_prior"]


def check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise ValueError unless ``weight`` is a non-empty, finite, floating 2-D tensor."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D (out_features x in_features), got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(weight.shape)})")
    if not weight.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        bad = (~torch.isfinite(weight)).sum().item()
        raise ValueError(f"{name} has {bad} NaN or Inf entries; clean the weights before computing a mask")


def check_nm(n: int, m: int) -> None:
    """Raise ValueError unless 0 < n < m and m >= 2."""
    if not isinstance(n, int) or not isinstance(m, int):
        raise ValueError(f"n and m must be integers, got n={n!r}, m={m!r}")
    if m < 2:
        raise ValueError(f"m must be at least 2, got m={m}")
    if not 0 < n < m:
        raise ValueError(f"n must satisfy 0 < n < m, got n={n}, m={m}")


def check_prior(prior: torch.Tensor | None, weight: torch.Tensor, name: str = "prior") -> None:
    """Raise ValueError unless ``prior`` is None or a mask of the weight's shape."""
    if prior is None:
        return
    if not isinstance(prior, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor mask, got {type(prior).__name__}")
    if tuple(prior.shape) != tuple(weight.shape):
        raise ValueError(f"{name} has shape {tuple(prior.shape)}, expected the weight's shape {tuple(weight.shape)}")
