"""Sparsity patterns: what shape of mask a layer has, and what it costs to store.

A pattern is a small frozen dataclass. Passes compute masks with :mod:`compressor.solvers`
and record the pattern they produced; the report uses :meth:`Pattern.storage_bytes` to price
the layer: the bytes the artifact writes for it (:func:`compressor.packing.pack`, the smallest
packed layout the mask fits), and artifacts save ``to_dict()`` so a loaded model knows its
patterns without recomputing anything.

Patterns: :class:`Dense`, :class:`Unstructured`, :class:`Block` (h x w blocks, any number per
block row), :class:`BalancedBlock` (the same number of kept blocks in every block row: the
layout the sparse kernels run fastest), :class:`NM` (N of every M consecutive weights along
the input dimension; ``transposable`` when W^T is N:M too), :class:`Gated` (input-dependent block
gating, Hadifar et al.: every weight is stored, plus a gate network per matrix).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch


__all__ = ["Pattern", "Dense", "Unstructured", "Block", "BalancedBlock", "NM", "Gated", "pattern_from_dict"]

_DTYPE_OF_SIZE = {1: torch.uint8, 2: torch.float16, 4: torch.float32, 8: torch.float64}


def _packed(pattern: "Pattern", mask: torch.Tensor, elem_bytes: int) -> int:
    """Bytes of the packed layout an artifact writes (packed sizes depend on the element size only)."""
    from .packing import packed_bytes  # packing reads pattern records: imported late

    return packed_bytes(mask.to(torch.bool), pattern.to_dict(), _DTYPE_OF_SIZE.get(elem_bytes, torch.float32))


@dataclass(frozen=True)
class Pattern:
    """Base class; subclasses set ``kind``."""

    kind: ClassVar[str] = "pattern"

    def describe(self) -> str:
        return self.kind

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def storage_bytes(self, mask: torch.Tensor, elem_bytes: int) -> int:
        """Bytes to store a weight with this ``mask`` in this pattern's sparse format."""
        raise NotImplementedError


@dataclass(frozen=True)
class Dense(Pattern):
    """No pruning."""

    kind: ClassVar[str] = "dense"

    def storage_bytes(self, mask, elem_bytes):
        return mask.numel() * elem_bytes


@dataclass(frozen=True)
class Unstructured(Pattern):
    """Any entries; stored as a bitmask (8 entries per byte) + kept values, or CSR where smaller."""

    kind: ClassVar[str] = "unstructured"

    def storage_bytes(self, mask, elem_bytes):
        return _packed(self, mask, elem_bytes)


@dataclass(frozen=True)
class Block(Pattern):
    """Whole ``h x w`` blocks; stored as BSR (block values + block column indices + row pointers)."""

    kind: ClassVar[str] = "block"
    h: int = 1
    w: int = 1

    def describe(self):
        return f"block {self.h}x{self.w}"

    def storage_bytes(self, mask, elem_bytes):
        return _packed(self, mask, elem_bytes)


@dataclass(frozen=True)
class BalancedBlock(Block):
    """``h x w`` blocks, the same number kept in every block row; values (R, h, k*w) + indices (R, k)."""

    kind: ClassVar[str] = "balanced_block"

    def describe(self):
        return f"balanced block {self.h}x{self.w}"

    def storage_bytes(self, mask, elem_bytes):
        return _packed(self, mask, elem_bytes)


@dataclass(frozen=True)
class NM(Pattern):
    """N of every M consecutive weights along the input dimension; values + ceil(log2 M)-bit indices."""

    kind: ClassVar[str] = "nm"
    n: int = 2
    m: int = 4
    transposable: bool = False

    def describe(self):
        return f"{'transposable ' if self.transposable else ''}{self.n}:{self.m}"

    def storage_bytes(self, mask, elem_bytes):
        return _packed(self, mask, elem_bytes)


@dataclass(frozen=True)
class Gated(Pattern):
    """``h x w`` blocks chosen per example by a gate network (Hadifar et al., docs/methods.md section 2).

    Nothing is pruned: storage is the dense weight plus the gate network's parameters (``in*K + K``
    for the full gate, ``in*rank + rank*K + K`` with a bottleneck). Compute per example (:meth:`flops`)
    is the kept fraction of the blocks plus the gate's multiply-adds.
    """

    kind: ClassVar[str] = "gated"
    h: int = 64
    w: int = 64
    keep: float = 0.5
    mode: str = "global"
    rank: int = 0

    def describe(self):
        extra = (" per row" if self.mode == "row" else "") + (f" rank {self.rank}" if self.rank else "")
        return f"gated {self.h}x{self.w} keep {self.keep:g}{extra}"

    def grid(self, shape) -> tuple[int, int]:
        """``(Ro, Ci)``: block rows and block columns of an ``(out, in)`` weight (edge blocks padded)."""
        return math.ceil(shape[0] / self.h), math.ceil(shape[1] / self.w)

    def kept(self, shape) -> tuple[int, int]:
        """``(n_kept, K)``: blocks kept per example and blocks in all (``ceil(keep * n)``, as the kernels)."""
        Ro, Ci = self.grid(shape)
        n = Ro * Ci if self.mode == "global" else Ci
        k = max(1, min(n, math.ceil(self.keep * n - 1e-9)))
        return (k if self.mode == "global" else k * Ro), Ro * Ci

    def gate_params(self, shape) -> int:
        K = math.prod(self.grid(shape))
        return shape[1] * K + K if not self.rank else shape[1] * self.rank + self.rank * K + K

    def gate_macs(self, shape) -> int:
        """Multiply-adds of the gate network per example."""
        K = math.prod(self.grid(shape))
        return shape[1] * K if not self.rank else shape[1] * self.rank + self.rank * K

    def flops(self, shape) -> int:
        """FLOPs per example: 2 x (kept fraction x weight entries + gate multiply-adds)."""
        n_kept, K = self.kept(shape)
        return 2 * (round(shape[0] * shape[1] * n_kept / K) + self.gate_macs(shape))

    def storage_bytes(self, mask, elem_bytes):
        return (mask.numel() + self.gate_params(tuple(mask.shape))) * elem_bytes


_KINDS = {cls.kind: cls for cls in (Dense, Unstructured, Block, BalancedBlock, NM, Gated)}


def pattern_from_dict(data: dict) -> Pattern:
    """Inverse of :meth:`Pattern.to_dict`."""
    data = dict(data)
    kind = data.pop("kind")
    try:
        cls = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown pattern kind {kind!r}; known: {', '.join(_KINDS)}") from None
    return cls(**data)
