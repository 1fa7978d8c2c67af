"""Greedy 2-approximation for transposable N:M, vectorised over tiles, plus repair
(Hubara et al., arXiv 2102.08124, section 3 of docs/methods.md).

Greedy: visit the entries of each tile by descending score and keep one while its row and its
column each hold fewer than N kept entries. All tiles advance together in torch; the only Python
loop is over the M*M ranks. Greedy can end with rows/columns short of N (a mask that violates N:M
is not N:M), so the result is repaired:

* ``repair="swap"`` (default): augmenting swaps along alternating paths of length 3. Greedy leaves
  the tile *maximal*: every (short row r, short column c) entry is kept, otherwise greedy would
  have taken it. Then row r has an unkept entry (r, c') in a full column c', and since column c'
  keeps N > (kept in c) entries, some row r' keeps (r', c') but not (r', c). Keeping (r, c') and
  (r', c) and dropping (r', c') adds one to row r and column c and leaves the rest unchanged; the
  maximality is preserved, so repeating ends with every row and column at exactly N. Each round
  fixes one short row/column pair in every broken tile at once, picking the swap of largest gain.
* ``repair="exact"``: re-solve only the broken tiles with the exact solver.

:func:`greedy_tiles` returns the number of tiles that needed repair.
"""

from __future__ import annotations

import contextlib

import torch

from .tiles import TileProblem, float_scores

__all__ = ["greedy_fill", "repair_swaps", "greedy_tiles", "row_col_counts", "single_thread", "REPAIRS"]

REPAIRS = ("swap", "exact")


@contextlib.contextmanager
def single_thread():
    """Run torch ops on one thread inside the block (restored after).

    The greedy and repair loops issue many small ops (one per rank); on a shared 2-core machine
    torch's thread pool spends more time synchronising than computing (measured: 0.15 s on one
    thread against 1-3 s on two for 4096 x 4096 at 4:8 under load).
    """
    old = torch.get_num_threads()
    if old != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if old != 1:
            torch.set_num_threads(old)


def _row_col_index(order: torch.Tensor, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, M*M) flat in-tile positions -> two (M*M, T) int32 indices into (T*M,) row/column counters."""
    T = order.shape[0]
    # Transpose in the narrowest dtype that holds M*M - 1 (the transpose copy is the cost here).
    small = torch.uint8 if M * M <= 256 else torch.int16
    o = order.to(small).T.contiguous()  # (M*M, T)
    if M & (M - 1) == 0:
        rows, cols = o >> (M.bit_length() - 1), o & (M - 1)
    else:
        rows, cols = o // M, o % M
    rows, cols = rows.to(torch.int32), cols.to(torch.int32)
    base = torch.arange(0, T * M, M, dtype=torch.int32, device=order.device)  # (T,)
    return rows.add_(base), cols.add_(base)


def _sort_key(scores: torch.Tensor) -> torch.Tensor:
    """Integer view of non-negative float scores with the same order (IEEE-754 bits of
    non-negative floats sort like the floats; sorting int32 is about 30% faster than float32 on
    CPU). Other dtypes are returned as they are."""
    view = {torch.float32: torch.int32, torch.float64: torch.int64}.get(scores.dtype)
    return scores.view(view) if view is not None else scores


def greedy_fill(scores: torch.Tensor, n: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy over (T, M, M) ``scores``: visit by descending score (ties: lower flat index first),
    keep while row and column counts are below ``n``. ``keep`` (optional) is a starting partial
    mask with row/column counts <= n; entries are only added. Returns (T, M, M) bool."""
    T, M, _ = scores.shape
    dev = scores.device
    order = torch.argsort(_sort_key(scores.reshape(T, M * M)), dim=1, descending=True, stable=True)  # (T, M*M)
    row_idx, col_idx = _row_col_index(order, M)  # (M*M, T) each
    if keep is None:
        row_cnt = torch.zeros(T * M, dtype=torch.uint8, device=dev)
        col_cnt = torch.zeros(T * M, dtype=torch.uint8, device=dev)
        already = None
    else:
        row_cnt, col_cnt = (x.reshape(-1).clone() for x in row_col_counts(keep))
        already = keep.reshape(T, M * M).gather(1, order).T.contiguous()  # (M*M, T)
    take = torch.empty(M * M, T, dtype=torch.bool, device=dev)
    with single_thread():
        for k in range(M * M):
            r, c = row_idx[k].long(), col_idx[k].long()
            ok = (torch.take(row_cnt, r) < n) & (torch.take(col_cnt, c) < n)
            if already is not None:
                ok &= ~already[k]
            take[k] = ok
            inc = ok.to(torch.uint8)
            row_cnt.put_(r, inc, accumulate=True)
            col_cnt.put_(c, inc, accumulate=True)
    if already is not None:
        take |= already
    kept = torch.zeros(T, M * M, dtype=torch.bool, device=dev)
    kept.scatter_(1, order, take.T.contiguous())
    return kept.reshape(T, M, M)


def row_col_counts(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column kept counts of (T, M, M) bool masks, as (T, M) uint8 each (M <= 255).

    Summing a uint8 view is about 10x faster than summing bool on CPU.
    """
    u8 = keep.view(torch.uint8)
    return u8.sum(2, dtype=torch.uint8), u8.sum(1, dtype=torch.uint8)


def _broken(keep: torch.Tensor, n: int) -> torch.Tensor:
    """(T,) bool: tiles with some row or column not at exactly n."""
    rows, cols = row_col_counts(keep)
    return (rows != n).any(1) | (cols != n).any(1)


def repair_swaps(keep: torch.Tensor, scores: torch.Tensor, n: int, max_rounds: int | None = None) -> torch.Tensor:
    """Repair greedy-maximal (T, M, M) masks in place of a copy by augmenting 3-swaps (see module doc).

    Every tile must have row/column counts <= n and no unkept entry whose row and column are both
    short (what :func:`greedy_fill` returns). Returns the repaired (T, M, M) bool masks.
    """
    keep = keep.clone()
    T, M, _ = keep.shape
    idx = torch.nonzero(_broken(keep, n)).reshape(-1)
    if not idx.numel():
        return keep
    limit = max_rounds if max_rounds is not None else n * M
    sub_all = keep[idx]  # (K, M, M) the broken tiles, repaired in place
    sc_all = scores[idx]  # (K, M, M)
    live = None  # indices into sub_all of the tiles still broken; None = all of them
    rounds = 0
    with single_thread():
        while live is None or live.numel():
            if rounds >= limit:
                raise RuntimeError(f"repair did not converge in {limit} rounds: the start mask is not greedy-maximal")
            # The first round works on sub_all itself (no gather/scatter copies of every broken tile).
            sub, sc = (sub_all, sc_all) if live is None else (sub_all[live], sc_all[live])  # (K, M, M)
            K = sub.shape[0]
            ar = torch.arange(K, device=keep.device)
            rows, cols = row_col_counts(sub)  # (K, M) each
            r = (rows < n).to(torch.int8).argmax(1)  # (K,) first short row
            c = (cols < n).to(torch.int8).argmax(1)  # (K,) first short column
            row_r = sub[ar, r]  # (K, M) over c'
            col_c = sub[ar, :, c]  # (K, M) over r'
            valid = (~row_r)[:, None, :] & sub & (~col_c)[:, :, None]  # (K, r', c')
            gain = torch.add(sc[ar, r][:, None, :], sc[ar, :, c][:, :, None]).sub_(sc)  # (K, r', c')
            gain.masked_fill_(~valid, float("-inf"))  # scores are finite: -inf marks "no swap here"
            best_gain, best = gain.reshape(K, M * M).max(1)  # (K,) each
            if bool(torch.isneginf(best_gain).any()):
                raise RuntimeError("repair found a tile without an augmenting swap: the start mask is not greedy-maximal")
            rp, cp = best // M, best % M
            sub[ar, r, cp] = True
            sub[ar, rp, cp] = False
            sub[ar, rp, c] = True
            still = torch.nonzero(_broken(sub, n)).reshape(-1)
            if live is None:
                live = still
            else:
                sub_all[live] = sub
                live = live[still]
            rounds += 1
    keep[idx] = sub_all
    return keep


def greedy_tiles(problem: TileProblem, repair: str = "swap", exact_solver=None) -> tuple[torch.Tensor, int]:
    """Greedy + repair on every tile of ``problem``: ((T, M, M) bool, number of tiles repaired).

    ``repair="exact"`` needs ``exact_solver``: a function TileProblem -> (t, M, M) bool.
    """
    if repair not in REPAIRS:
        raise ValueError(f"repair must be one of {REPAIRS}, got {repair!r}")
    scores = float_scores(problem)  # (T, M, M)
    keep = greedy_fill(scores, problem.n)
    broken = torch.nonzero(_broken(keep, problem.n)).reshape(-1)
    if broken.numel():
        if repair == "swap":
            keep = repair_swaps(keep, scores, problem.n)
        else:
            if exact_solver is None:
                raise ValueError("repair='exact' needs an exact_solver")
            keep[broken] = exact_solver(problem.subset(broken))
    return keep, int(broken.numel())
