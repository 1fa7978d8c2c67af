"""Sparse weight formats: balanced block, general BSR and packed N:M.

Each format converts from a dense weight plus a bool mask (``from_dense``) and back
(``to_dense`` gives exactly ``weight * mask``; ``to_mask`` gives the mask back), so a swapped
module can always be turned back into a dense one.

* :class:`BalancedBlock` -- every block row keeps the same number ``k`` of ``bh x bw`` blocks
  (Narang et al., "Block-Sparse Recurrent Neural Networks", arXiv 1711.02782, with the balanced
  variant of docs/methods.md sections 1 and 2). Values are ``(R, bh, k*bw)`` plus block-column indices
  ``(R, k)``; a product is one gather of ``x``'s block columns plus one batched matmul.
* :class:`BSR` -- blocked compressed sparse rows (``crow_indices``, ``col_indices``,
  ``values (nnzb, bh, bw)``), the layout of ``torch.sparse_bsr_tensor``; rows may differ in their
  number of blocks.
* :class:`NMPacked` -- N:M along the input dimension (keep at most ``n`` of every ``m``
  consecutive weights of a row; Hubara et al., arXiv 2102.08124): values ``(out, G, n)`` plus
  in-group positions ``(out, G, n)`` with ``G = ceil(in / m)``.

Padding: shapes that are not multiples of the block (or of ``m``) are padded at the bottom/right
with zero weights and unkept mask entries, so the formats store the padded grid
(``padded_shape``). Padded rows and columns are zeros; ops crop outputs back to ``shape[0]`` and
pad inputs with zeros, so results are those of the unpadded ``weight * mask``.

Unbalanced masks: :meth:`BalancedBlock.from_dense` with ``pad_rows=True`` gives every block row
``k = max`` slots; the extra slots hold zero blocks and point at block columns that row does not
keep (the smallest such columns), so there are never duplicate columns in a row. ``row_nnz``
records how many slots of each row are real (real blocks come first, sorted by column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import ceil_div, check_block, check_weight_mask, pad_to_blocks

__all__ = ["BalancedBlock", "BSR", "NMPacked", "block_mask_grid", "is_balanced"]


def block_mask_grid(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Block-level mask ``(R, C)`` of a bool ``mask`` whose kept entries form whole blocks.

    Raises ValueError (naming the first offending block) if some block is only partly kept.
    Blocks that overhang the matrix edge are judged on their in-range entries only.
    """
    bh, bw = block
    rows, cols = mask.shape
    R, C = ceil_div(rows, bh), ceil_div(cols, bw)
    any_ = pad_to_blocks(mask, block, value=False).view(R, bh, C, bw).any(dim=3).any(dim=1)  # (R, C)
    all_ = pad_to_blocks(mask, block, value=True).view(R, bh, C, bw).all(dim=3).all(dim=1)  # (R, C)
    bad = any_ != all_
    if bool(bad.any()):
        r, c = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"mask does not form whole {bh}x{bw} blocks: block ({r}, {c}) (rows {r * bh}..{r * bh + bh - 1}, "
            f"cols {c * bw}..{c * bw + bw - 1}) is partly kept; {int(bad.sum())} such blocks in all"
        )
    return any_


def is_balanced(mask: torch.Tensor, block) -> bool:
    """True if every block row of the block-structured ``mask`` keeps the same number of blocks."""
    counts = block_mask_grid(mask, check_block("block", block)).sum(dim=1)
    return bool((counts == counts[0]).all()) if counts.numel() else True


def _blocks_to_entries(grid: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A block grid ``(R, C)`` as the padded ``(R*bh, C*bw)`` matrix, each flag repeated over its block
    (one copy; ``repeat_interleave`` twice made two)."""
    (R, C), (bh, bw) = grid.shape, block
    return grid.view(R, 1, C, 1).expand(R, bh, C, bw).reshape(R * bh, C * bw)


def _slots(kept: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of the bool grid ``kept (R, C)``: the kept columns ascending, then unkept ones; first k."""
    C = kept.shape[1]
    key = (~kept).long() * C + torch.arange(C, device=kept.device)  # kept first, then by column
    return key.argsort(dim=1)[:, :k].contiguous()  # (R, k)


@dataclass(frozen=True)
class BalancedBlock:
    """Balanced block-sparse matrix: ``values (R, bh, k*bw)``, ``col_idx (R, k)``, ``row_nnz (R,)``."""

    values: torch.Tensor
    col_idx: torch.Tensor
    row_nnz: torch.Tensor
    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def k(self) -> int:
        """Slots (kept blocks, including zero padding blocks) per block row."""
        return int(self.col_idx.shape[1])

    @property
    def grid(self) -> tuple[int, int]:
        """(R, C): number of block rows and block columns of the padded matrix."""
        return ceil_div(self.shape[0], self.block[0]), ceil_div(self.shape[1], self.block[1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        R, C = self.grid
        return R * self.block[0], C * self.block[1]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None, block, *, pad_rows: bool = False) -> "BalancedBlock":
        """Pack ``weight * mask``; ``mask`` must keep whole blocks, the same number in each block row.

        With ``pad_rows=True`` an unbalanced mask is accepted and short rows get zero blocks.
        """
        mask = check_weight_mask(weight, mask)
        block = check_block("block", block)
        bh, bw = block
        kept = block_mask_grid(mask, block)  # (R, C)
        counts = kept.sum(dim=1)
        R, C = kept.shape
        if R and not pad_rows and not bool((counts == counts[0]).all()):
            raise ValueError(
                f"mask is not balanced: block rows keep between {int(counts.min())} and {int(counts.max())} "
                f"{bh}x{bw} blocks; use pad_rows=True or the BSR format"
            )
        k = int(counts.max()) if R else 0
        col_idx = _slots(kept, k)  # (R, k)
        wp = pad_to_blocks(weight * mask, block)
        wb = wp.view(R, bh, C, bw).permute(0, 2, 1, 3)  # (R, C, bh, bw)
        gathered = torch.gather(wb, 1, col_idx.view(R, k, 1, 1).expand(R, k, bh, bw))  # (R, k, bh, bw)
        values = gathered.permute(0, 2, 1, 3).reshape(R, bh, k * bw)  # (R, bh, k*bw)
        return cls(values.contiguous(), col_idx, counts.to(torch.int64), tuple(weight.shape), block)

    def values_t(self) -> torch.Tensor:
        """Values in gather order, transposed per block: ``(R, k*bw, bh)`` (the kernel layout)."""
        R, (bh, bw), k = self.grid[0], self.block, self.k
        return self.values.view(R, bh, k, bw).permute(0, 2, 3, 1).reshape(R, k * bw, bh).contiguous()

    def to_dense(self) -> torch.Tensor:
        """Dense ``(out, in)`` weight (exactly ``weight * mask``)."""
        (R, C), (bh, bw), k = self.grid, self.block, self.k
        # scattered straight into the row-major (R, bh, C, bw) view of the padded matrix: no permuted copy
        dense = torch.zeros(R, bh, C, bw, dtype=self.values.dtype, device=self.values.device)
        dense.scatter_(2, self.col_idx.view(R, 1, k, 1).expand(R, bh, k, bw), self.values.view(R, bh, k, bw))
        return dense.view(R * bh, C * bw)[: self.shape[0], : self.shape[1]]

    def to_mask(self) -> torch.Tensor:
        """Bool mask of the real (not padding) blocks, shape ``shape``."""
        (R, C), k = self.grid, self.k
        real = torch.arange(k, device=self.col_idx.device).view(1, k) < self.row_nnz.view(R, 1)  # (R, k)
        grid = torch.zeros(R, C, dtype=torch.bool, device=self.col_idx.device)
        grid.scatter_(1, self.col_idx, real)
        return _blocks_to_entries(grid, self.block)[: self.shape[0], : self.shape[1]]

    def to_bsr(self) -> "BSR":
        """The real blocks (padding slots dropped) as a :class:`BSR`, equal to ``BSR.from_dense`` of
        ``to_dense()`` and ``to_mask()``; no dense matrix is built. Real slots must hold ascending
        block columns (as :meth:`from_dense` writes them)."""
        R, (bh, bw), k = self.grid[0], self.block, self.k
        real = torch.arange(k, device=self.col_idx.device).view(1, k) < self.row_nnz.view(R, 1)  # (R, k)
        blocks = self.values.view(R, bh, k, bw).permute(0, 2, 1, 3)[real]  # (nnzb, bh, bw)
        crow = torch.zeros(R + 1, dtype=torch.int64, device=self.col_idx.device)
        crow[1:] = torch.cumsum(self.row_nnz.to(torch.int64), 0)
        return BSR(crow, self.col_idx[real].to(torch.int64), blocks.contiguous(), self.shape, self.block)


@dataclass(frozen=True)
class BSR:
    """Block CSR: ``crow_indices (R+1,)``, ``col_indices (nnzb,)``, ``values (nnzb, bh, bw)``."""

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return ceil_div(self.shape[0], self.block[0]), ceil_div(self.shape[1], self.block[1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        R, C = self.grid
        return R * self.block[0], C * self.block[1]

    @property
    def nnzb(self) -> int:
        return int(self.col_indices.numel())

    def row_indices(self) -> torch.Tensor:
        """Block-row index of every stored block, ``(nnzb,)``."""
        counts = self.crow_indices[1:] - self.crow_indices[:-1]
        return torch.repeat_interleave(torch.arange(self.grid[0], device=counts.device), counts)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None, block) -> "BSR":
        """Pack ``weight * mask``; ``mask`` must keep whole blocks (any number per block row)."""
        mask = check_weight_mask(weight, mask)
        block = check_block("block", block)
        bh, bw = block
        kept = block_mask_grid(mask, block)  # (R, C)
        R, C = kept.shape
        rows, cols = kept.nonzero(as_tuple=True)  # row-major order: sorted by row, then column
        wb = pad_to_blocks(weight * mask, block).view(R, bh, C, bw).permute(0, 2, 1, 3)  # (R, C, bh, bw)
        values = wb[rows, cols].contiguous()  # (nnzb, bh, bw)
        crow = torch.zeros(R + 1, dtype=torch.int64, device=weight.device)
        crow[1:] = torch.cumsum(kept.sum(dim=1), 0)
        return cls(crow, cols.to(torch.int64), values, tuple(weight.shape), block)

    def to_dense(self) -> torch.Tensor:
        (R, C), (bh, bw) = self.grid, self.block
        dense = torch.zeros(R, bh, C, bw, dtype=self.values.dtype, device=self.values.device)
        dense.permute(0, 2, 1, 3)[self.row_indices(), self.col_indices] = self.values  # written through the view
        return dense.view(R * bh, C * bw)[: self.shape[0], : self.shape[1]]

    def to_mask(self) -> torch.Tensor:
        (R, C) = self.grid
        grid = torch.zeros(R, C, dtype=torch.bool, device=self.values.device)
        grid[self.row_indices(), self.col_indices] = True
        return _blocks_to_entries(grid, self.block)[: self.shape[0], : self.shape[1]]

    def to_balanced(self) -> BalancedBlock:
        """The same blocks in the balanced layout, short block rows padded as
        ``BalancedBlock.from_dense(..., pad_rows=True)`` pads them (zero blocks at the smallest block
        columns the row does not keep), so the result equals that of the dense round trip; only the
        ``(R, C)`` block grid is built, never the dense matrix. Column indices must ascend within
        each block row (as :meth:`from_dense` writes them)."""
        (R, C), (bh, bw) = self.grid, self.block
        device = self.values.device
        counts = (self.crow_indices[1:] - self.crow_indices[:-1]).to(torch.int64)
        k = int(counts.max()) if R else 0
        rows = self.row_indices()
        kept = torch.zeros(R, C, dtype=torch.bool, device=device)
        kept[rows, self.col_indices] = True
        # _slots lists a row's kept columns first, ascending: stored block j of row r is slot j - crow[r]
        slot = torch.arange(self.nnzb, device=device) - self.crow_indices[rows]
        blocks = torch.zeros(R, k, bh, bw, dtype=self.values.dtype, device=device)
        blocks[rows, slot] = self.values
        values = blocks.permute(0, 2, 1, 3).reshape(R, bh, k * bw)
        return BalancedBlock(values.contiguous(), _slots(kept, k), counts, self.shape, self.block)

    def to_torch(self) -> torch.Tensor:
        """The padded matrix as a ``torch.sparse_bsr_tensor`` (for torch's own BSR kernels)."""
        return torch.sparse_bsr_tensor(
            self.crow_indices, self.col_indices, self.values, size=self.padded_shape, dtype=self.values.dtype,
            check_invariants=True,
        )


@dataclass(frozen=True)
class NMPacked:
    """N:M along the input dim: ``values (out, G, n)``, in-group positions ``indices (out, G, n)``.

    ``counts (out, G)`` is the number of real slots per group: real slots come first (ascending
    position); groups with fewer than ``n`` kept weights (e.g. the zero-padded last group) fill the
    spare slots with zero values at positions they do not keep.
    """

    values: torch.Tensor
    indices: torch.Tensor
    counts: torch.Tensor
    shape: tuple[int, int]
    n: int
    m: int

    @property
    def groups(self) -> int:
        return ceil_div(self.shape[1], self.m)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None, n: int, m: int) -> "NMPacked":
        """Pack ``weight * mask``; every group of ``m`` consecutive inputs of a row keeps at most ``n``."""
        mask = check_weight_mask(weight, mask)
        n, m = check_block("(n, m)", (n, m))
        if n > m:
            raise ValueError(f"n must be <= m, got n={n}, m={m}")
        out, inp = weight.shape
        G = ceil_div(inp, m)
        mp = pad_to_blocks(mask, (1, m), value=False).view(out, G, m)  # (out, G, m)
        counts = mp.sum(dim=2)
        if bool((counts > n).any()):
            o, g = (int(v) for v in (counts > n).nonzero()[0])
            raise ValueError(
                f"mask is not {n}:{m}: row {o}, input group {g} (cols {g * m}..{g * m + m - 1}) keeps "
                f"{int(counts[o, g])} > {n} entries"
            )
        wp = pad_to_blocks(weight * mask, (1, m)).view(out, G, m)
        key = (~mp).long() * m + torch.arange(m, device=weight.device)  # kept first, then position
        idx = key.argsort(dim=2)[:, :, :n]  # (out, G, n)
        values = torch.gather(wp, 2, idx)
        small = torch.uint8 if m <= 256 else torch.int64
        return cls(values.contiguous(), idx.to(small), counts.to(small), tuple(weight.shape), n, m)

    def transposable(self) -> bool:
        """True if the mask also keeps at most ``n`` of every ``m`` down each column, in the aligned
        ``m x m`` tiles (both sizes multiples of ``m``): what ``is_transposable_2to4(self.to_mask())``
        says for 2:4, counted from the slots without building the ``(out, in)`` mask."""
        out, inp = self.shape
        if out % self.m or inp % self.m:
            return False
        G, n, m = self.groups, self.n, self.m
        real = torch.arange(n, device=self.indices.device).view(1, 1, n) < self.counts.long().unsqueeze(2)
        for p in range(m):  # kept entries at in-group position p, per tile of m rows: (out/m, G)
            if bool(((self.indices == p) & real).view(out // m, m, G, n).sum(dim=(1, 3)).gt(n).any()):
                return False
        return True

    def column_indices(self) -> torch.Tensor:
        """Absolute (padded) input column of every stored value, ``(out, G*n)`` int64."""
        out, G, n = self.values.shape
        base = torch.arange(G, device=self.values.device).view(1, G, 1) * self.m
        return (base + self.indices.long()).view(out, G * n)

    def to_dense(self) -> torch.Tensor:
        out, G, _ = self.values.shape
        dense = torch.zeros(out, G, self.m, dtype=self.values.dtype, device=self.values.device)
        dense.scatter_(2, self.indices.long(), self.values)
        return dense.view(out, G * self.m)[:, : self.shape[1]]

    def to_mask(self) -> torch.Tensor:
        """Bool mask of the real slots, shape ``shape``."""
        out, G, n = self.values.shape
        real = torch.arange(n, device=self.values.device).view(1, 1, n) < self.counts.long().unsqueeze(2)
        dense = torch.zeros(out, G, self.m, dtype=torch.bool, device=self.values.device)
        dense.scatter_(2, self.indices.long(), real)
        return dense.view(out, G * self.m)[:, : self.shape[1]]
