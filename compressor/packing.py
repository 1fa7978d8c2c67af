"""Packed weight layouts: how an artifact stores each masked weight in its pattern's sparse form.

A masked weight ``name`` is written as a few tensors ``__packed__.<name>.<part>`` plus a layout
record in the artifact metadata (``{"layout", "version", "shape", "dtype", ...}``); the mask is
implied by the layout (never stored beside it) and the stored values are ``weight * mask``.

=================  ==========================================================================
layout             parts (index tensors: the smallest of uint8 / int16 / int32 that fits)
=================  ==========================================================================
``dense``          ``values`` (shape): every entry kept
``balanced_block`` ``values (R, bh, k*bw)``, ``col_idx (R, k)`` ascending block columns per block row
``bsr``            ``values (nnzb, bh, bw)``, ``col_idx (nnzb,)``, ``crow (R+1,)``
``nm``             ``values (rows, G, n)``, ``idx``: uint8, ``ceil(log2 m)`` bits per value, LSB first
``bitmask``        ``bits``: uint8, the mask 8 entries per byte, LSB first; ``values (nnz,)`` row-major
``csr``            ``values (nnz,)``, ``col_idx (nnz,)``, ``crow (rows+1,)`` of the ``(shape[0], -1)`` view
=================  ==========================================================================

``R, C`` are block rows/columns of the zero-padded grid (``ceil``), ``G = ceil(cols / m)``. N:M
slots are ascending in-group positions; in a last, partial group slots may point at padding
positions (values zero, cropped on unpacking). :func:`pack` writes the smallest layout the mask
fits, trying the pattern's own layout first (ties keep it): e.g. 4:8 masks are smaller as a
bitmask (8 bits per group) than as 3-bit indices (12 bits per group).

Loading is hardened: :func:`check_record` (metadata), :func:`check_parts` (header shapes and
dtypes, before any data is read) and :func:`unpack` / :func:`native_format` /
:func:`kernel_format` (index ranges and order, counts) raise ValueError naming the offending
tensor. :func:`unpack` gives the dense weight and mask; :func:`kernel_format` gives a swapped
layer's kernel format (``BalancedBlock``/``BSR``/``NMPacked``) from the parts as they are, with no
dense ``(rows, cols)`` tensor (a ``bitmask``/``csr`` weight is converted in bounded row bands).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernels.formats import BSR, BalancedBlock, NMPacked

__all__ = ["LAYOUT_VERSION", "PREFIX", "LAYOUTS", "BAND_ENTRIES", "pack", "packed_bytes", "check_record", "check_parts",
           "unpack", "native_format", "kernel_format", "part_key", "parts_of", "dense_numel", "index_dtype", "pack_bits",
           "unpack_bits"]

LAYOUT_VERSION = 1
PREFIX = "__packed__."
LAYOUTS = ("dense", "balanced_block", "bsr", "nm", "bitmask", "csr")
FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
INDEX_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)
_PARTS = {"dense": ("values",), "balanced_block": ("values", "col_idx"), "bsr": ("values", "col_idx", "crow"),
          "nm": ("values", "idx"), "bitmask": ("bits", "values"), "csr": ("values", "col_idx", "crow")}
_MAX_BLOCK = 1 << 16


def part_key(name: str, part: str) -> str:
    """The safetensors key of one part of a packed weight."""
    return f"{PREFIX}{name}.{part}"


def index_dtype(bound: int) -> torch.dtype:
    """Smallest stored integer dtype holding every value in ``[0, bound]``."""
    for dtype, top in ((torch.uint8, 255), (torch.int16, 2**15 - 1), (torch.int32, 2**31 - 1)):
        if bound <= top:
            return dtype
    return torch.int64


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _bits(m: int) -> int:
    return math.ceil(math.log2(m)) if m > 1 else 0


def pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Bool/0-1 tensor -> uint8, 8 flags per byte, least significant bit first (numpy ``bitorder='little'``)."""
    flat = flags.reshape(-1).to(torch.int64)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)]).view(-1, 8)
    return (flat << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` flags, as bool."""
    # numpy's unpackbits: 0.03 ms for 256K flags, torch's shifts 0.5 ms (one thread)
    flags = np.unpackbits(packed.detach().cpu().numpy(), count=count, bitorder="little")
    return torch.from_numpy(flags.view(np.bool_))


#: integer dtypes of each float width: values are moved as their raw bits (numpy has no bfloat16)
_RAW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _expand(flags: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor of ``flags.numel()`` zeros with ``values`` at the set flags, in order (the
    row-major bitmask layout). numpy's index put takes half the time of ``masked_scatter_`` (one
    thread); the indices go 1M flags at a time, so their int64s stay small."""
    raw = values.contiguous().view(_RAW[values.element_size()]).numpy()
    out, where = np.zeros(flags.numel(), raw.dtype), flags.numpy()
    done, step = 0, 1 << 20
    for start in range(0, where.size, step):
        idx = np.flatnonzero(where[start:start + step])
        out[start + idx] = raw[done:done + idx.size]
        done += idx.size
    return torch.from_numpy(out).view(values.dtype)


def _record(layout: str, weight: torch.Tensor, **extra) -> dict:
    dtype = str(weight.dtype).replace("torch.", "")
    return {"layout": layout, "version": LAYOUT_VERSION, "shape": list(weight.shape), "dtype": dtype, **extra}


def _balanced(weight, mask, block):
    fmt = BalancedBlock.from_dense(weight, mask, block)  # ValueError if unbalanced or not whole blocks
    C = fmt.grid[1]
    return _record("balanced_block", weight, block=list(block)), {
        "values": fmt.values, "col_idx": fmt.col_idx.to(index_dtype(max(C - 1, 0)))}


def _bsr(weight, mask, block):
    fmt = BSR.from_dense(weight, mask, block)
    R, C = fmt.grid
    return _record("bsr", weight, block=list(block)), {
        "values": fmt.values, "col_idx": fmt.col_indices.to(index_dtype(max(C - 1, 0))),
        "crow": fmt.crow_indices.to(index_dtype(fmt.nnzb))}


def _nm(weight, mask, n, m):
    rows, cols = weight.shape
    G = _ceil(cols, m)
    pad = G * m - cols
    kept = torch.nn.functional.pad(mask, (0, pad), value=False).view(rows, G, m)
    padding = torch.zeros(G * m, dtype=torch.bool)
    padding[cols:] = True
    # slots: kept positions first, then padding positions (last group only), ascending
    rank = torch.where(kept, 0, torch.where(padding.view(1, G, m), 1, 2))
    idx = (rank * m + torch.arange(m)).argsort(dim=2)[:, :, :n].sort(dim=2).values
    chosen = torch.gather(rank, 2, idx)
    if bool((kept.sum(dim=2) > n).any()) or bool((chosen == 2).any()):
        raise ValueError(f"mask does not keep exactly {n} of every {m}")
    wp = torch.nn.functional.pad(weight * mask, (0, pad)).view(rows, G, m)
    values = torch.gather(wp, 2, idx)
    b = _bits(m)
    bits = (idx.reshape(-1, 1) >> torch.arange(b)) & 1
    return _record("nm", weight, n=n, m=m), {"values": values.contiguous(), "idx": pack_bits(bits)}


def _bitmask(weight, mask):
    return _record("bitmask", weight), {"bits": pack_bits(mask), "values": weight[mask].contiguous()}


def _csr(weight, mask):
    rows = weight.shape[0]
    m2 = mask.reshape(rows, -1)
    cols = m2.shape[1]
    nz = m2.nonzero()
    crow = torch.zeros(rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(m2.sum(dim=1), 0)
    return _record("csr", weight), {"values": weight.reshape(rows, -1)[m2].contiguous(),
                                    "col_idx": nz[:, 1].to(index_dtype(max(cols - 1, 0))),
                                    "crow": crow.to(index_dtype(int(crow[-1])))}


def _candidates(weight: torch.Tensor, mask: torch.Tensor, pattern: dict | None):
    """Layouts this mask fits, the pattern's own first."""
    if bool(mask.all()):
        yield _record("dense", weight), {"values": weight.contiguous()}
        return
    kind = (pattern or {}).get("kind")
    if weight.dim() == 2 and kind in ("block", "balanced_block"):
        block = (int(pattern.get("h", 1)), int(pattern.get("w", 1)))
        makers = (_balanced, _bsr) if kind == "balanced_block" else (_bsr, _balanced)
        for make in makers:
            try:
                yield make(weight, mask, block)
            except ValueError:  # the mask does not form (balanced) whole blocks: another layout
                pass
    if weight.dim() == 2 and kind == "nm":
        try:
            yield _nm(weight, mask, int(pattern.get("n", 2)), int(pattern.get("m", 4)))
        except ValueError:
            pass
    yield _bitmask(weight, mask)
    if weight.dim() >= 2:
        yield _csr(weight, mask)


def _nbytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def pack(weight: torch.Tensor, mask: torch.Tensor, pattern: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """The smallest layout of ``weight * mask``: ``(layout record, {part: tensor})``.

    ``pattern`` is the layer's pattern record (``Pattern.to_dict()``); it names the block size or
    ``n:m`` to try first. Any mask packs (a bitmask or CSR always fits).
    """
    weight, mask = weight.detach().cpu(), mask.detach().cpu().to(torch.bool)
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    best = None
    for record, parts in _candidates(weight, mask, pattern):
        if best is None or _nbytes(parts) < _nbytes(best[1]):
            best = (record, parts)
    return best


def packed_bytes(mask: torch.Tensor, pattern: dict | None, dtype: torch.dtype = torch.float32) -> int:
    """Bytes :func:`pack` writes for a weight of ``dtype`` with this ``mask`` (the report's figure)."""
    return _nbytes(pack(torch.zeros(mask.shape, dtype=dtype), mask, pattern)[1])


# -- loading: every check raises ValueError naming the tensor --------------------------------------


def _int(v, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def check_record(name: str, rec: object) -> None:
    """Raise ValueError unless ``rec`` is a layout record this version reads."""
    where = f"layouts[{name[:80]!r}]"
    if not isinstance(rec, dict) or rec.get("layout") not in LAYOUTS:
        raise ValueError(f"{where}: expected {{layout: one of {', '.join(LAYOUTS)}, version, shape, dtype}}")
    if rec.get("version") != LAYOUT_VERSION:
        raise ValueError(f"{where}: layout version {str(rec.get('version'))[:20]} is not supported "
                         f"(this version reads {LAYOUT_VERSION})")
    shape = rec.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(_int(d, 0, 2**31) for d in shape):
        raise ValueError(f"{where}.shape: expected 1 to 8 sizes in [0, 2**31]")
    if not isinstance(rec.get("dtype"), str) or rec["dtype"] not in FLOATS:
        raise ValueError(f"{where}.dtype: expected one of {', '.join(FLOATS)}")
    layout = rec["layout"]
    if layout in ("balanced_block", "bsr", "nm") and len(shape) != 2:
        raise ValueError(f"{where}.shape: a {layout} layout is 2-D")
    if layout == "csr" and len(shape) < 2:
        raise ValueError(f"{where}.shape: a csr layout has at least 2 dimensions")
    if layout in ("balanced_block", "bsr"):
        block = rec.get("block")
        if not isinstance(block, list) or len(block) != 2 or not all(_int(b, 1, _MAX_BLOCK) for b in block):
            raise ValueError(f"{where}.block: expected two integers in [1, {_MAX_BLOCK}]")
    if layout == "nm" and not (_int(rec.get("m"), 1, 64) and _int(rec.get("n"), 1, rec["m"])):
        raise ValueError(f"{where}: expected integers 1 <= n <= m <= 64")


def parts_of(rec: dict) -> tuple[str, ...]:
    """The part names a (checked) layout record stores."""
    return _PARTS[rec["layout"]]


def dense_numel(rec: dict) -> int:
    """Values :func:`unpack` allocates for a checked record (the zero-padded grid for blocks and groups)."""
    rows, cols = _geometry(rec)
    if rec["layout"] in ("balanced_block", "bsr"):
        bh, bw = rec["block"]
        return _ceil(rows, bh) * bh * _ceil(cols, bw) * bw
    if rec["layout"] == "nm":
        return rows * _ceil(cols, rec["m"]) * rec["m"]
    return rows * cols


def _geometry(rec: dict) -> tuple[int, int]:
    shape = rec["shape"]
    return shape[0], math.prod(shape[1:])


def check_parts(name: str, rec: dict, infos: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Compare the stored parts' header shapes and dtypes with the layout (no data read yet)."""
    layout, dtype = rec["layout"], FLOATS[rec["dtype"]]
    got = {}
    for part in _PARTS[layout]:
        key = part_key(name, part)
        if key not in infos:
            raise ValueError(f"{key}: missing (the {layout} layout of {name} needs it)")
        got[part] = infos[key]

    def need(part, shape, dtypes):
        key = part_key(name, part)
        if tuple(got[part][0]) != tuple(shape) or got[part][1] not in dtypes:
            raise ValueError(f"{key}: stored {tuple(got[part][0])} {got[part][1]}, the layout needs {tuple(shape)} of "
                             f"{'/'.join(str(d).replace('torch.', '') for d in dtypes)}")

    rows, cols = _geometry(rec)
    if layout == "dense":
        need("values", rec["shape"], (dtype,))
    elif layout in ("balanced_block", "bsr"):
        bh, bw = rec["block"]
        R, C = _ceil(rows, bh), _ceil(cols, bw)
        if layout == "balanced_block":
            k = got["col_idx"][0][1] if len(got["col_idx"][0]) == 2 else -1
            if not 0 <= k <= C:
                raise ValueError(f"{part_key(name, 'col_idx')}: expected ({R}, k) with k <= {C}")
            need("col_idx", (R, k), INDEX_DTYPES)
            need("values", (R, bh, k * bw), (dtype,))
        else:
            nnzb = got["col_idx"][0][0] if len(got["col_idx"][0]) == 1 else -1
            if not 0 <= nnzb <= R * C:
                raise ValueError(f"{part_key(name, 'col_idx')}: expected (nnzb,) with nnzb <= {R * C}")
            need("col_idx", (nnzb,), INDEX_DTYPES)
            need("crow", (R + 1,), INDEX_DTYPES)
            need("values", (nnzb, bh, bw), (dtype,))
    elif layout == "nm":
        n, m = rec["n"], rec["m"]
        G = _ceil(cols, m)
        need("values", (rows, G, n), (dtype,))
        need("idx", (_ceil(rows * G * n * _bits(m), 8),), (torch.uint8,))
    else:  # bitmask, csr: nnz values
        nnz = got["values"][0][0] if len(got["values"][0]) == 1 else -1
        if not 0 <= nnz <= rows * cols:
            raise ValueError(f"{part_key(name, 'values')}: expected (nnz,) with nnz <= {rows * cols}")
        need("values", (nnz,), (dtype,))
        if layout == "bitmask":
            need("bits", (_ceil(rows * cols, 8),), (torch.uint8,))
        else:
            need("col_idx", (nnz,), INDEX_DTYPES)
            need("crow", (rows + 1,), INDEX_DTYPES)


def _check_rows(name: str, crow: torch.Tensor, col: torch.Tensor, ncols: int) -> torch.Tensor:
    """Compressed-row pointers and column indices in range and ascending; returns each entry's row."""
    if int(crow[0]) != 0 or bool((crow[1:] < crow[:-1]).any()) or int(crow[-1]) != col.numel():
        raise ValueError(f"{part_key(name, 'crow')}: row pointers must rise from 0 to {col.numel()}")
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= ncols):
        raise ValueError(f"{part_key(name, 'col_idx')}: column indices outside [0, {ncols})")
    row = torch.repeat_interleave(torch.arange(crow.numel() - 1), crow[1:] - crow[:-1])
    if bool(((row[1:] == row[:-1]) & (col[1:] <= col[:-1])).any()):
        raise ValueError(f"{part_key(name, 'col_idx')}: column indices must be strictly ascending within a row")
    return row


def _unpack_fields(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """The first ``count`` ``bits``-wide fields of the least-significant-bit-first stream ``packed``
    (uint8), as uint8. Decoded a few thousand bytes at a time: a field-per-int64 temporary of a
    2:4 weight would be twice the size of the dense weight."""
    if bits == 0:
        return torch.zeros(count, dtype=torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4 bits: whole fields in every byte, shifted out in uint8
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
        return ((packed[: _ceil(count * bits, 8)].unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    g = math.gcd(bits, 8)
    span, per = bits // g, 8 // g  # every `span` bytes hold exactly `per` whole fields
    periods = _ceil(count, per)
    data = packed[: periods * span]
    data = torch.cat([data, data.new_zeros(periods * span - data.numel())]).view(periods, span)
    out = torch.empty(periods * per, dtype=torch.uint8)
    byte_shift, field_shift = torch.arange(span) * 8, torch.arange(per) * bits
    step = 1 << 15
    for start in range(0, periods, step):
        word = (data[start:start + step].to(torch.int64) << byte_shift).sum(dim=1)  # <= 48 bits (bits <= 6)
        fields = (word.unsqueeze(1) >> field_shift) & ((1 << bits) - 1)
        out[start * per:start * per + fields.numel()] = fields.reshape(-1).to(torch.uint8)
    return out[:count]


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(packed: torch.Tensor, count: int) -> int:
    """Set flags among the first ``count`` of a :func:`pack_bits` stream (without unpacking it)."""
    whole, rest = divmod(count, 8)
    total = int(_POPCOUNT[packed[:whole].numpy()].sum(dtype=np.int64)) if whole else 0
    if rest:
        total += int(unpack_bits(packed[whole:whole + 1], rest).sum())
    return total


def _block_cols(name: str, col: torch.Tensor, C: int) -> None:
    """A balanced_block layout's block columns: in range and strictly ascending in each block row."""
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= C):
        raise ValueError(f"{part_key(name, 'col_idx')}: block columns outside [0, {C})")
    if bool((col[:, 1:] <= col[:, :-1]).any()):
        raise ValueError(f"{part_key(name, 'col_idx')}: block columns must be strictly ascending per block row")


def native_format(name: str, rec: dict, parts: dict[str, torch.Tensor]) -> BalancedBlock | BSR | NMPacked | None:
    """The kernels' format that a ``balanced_block``, ``bsr`` or ``nm`` layout stores, built from the
    parts as they are (values untouched, indices widened to the kernels' dtypes) after checking the
    indices (ValueError naming the tensor); None for the other layouts. No dense tensor is built."""
    layout, shape = rec["layout"], tuple(rec["shape"])
    rows, cols = _geometry(rec)
    values = parts["values"]
    if layout in ("balanced_block", "bsr"):
        block = tuple(rec["block"])
        C = _ceil(cols, block[1])
        col = parts["col_idx"].to(torch.int64)
        if layout == "balanced_block":
            _block_cols(name, col, C)
            return BalancedBlock(values, col, torch.full((col.shape[0],), col.shape[1], dtype=torch.int64), shape, block)
        crow = parts["crow"].to(torch.int64)
        _check_rows(name, crow, col, C)
        return BSR(crow, col, values, shape, block)
    if layout != "nm":
        return None
    n, m = rec["n"], rec["m"]
    G = values.shape[1]
    idx = _unpack_fields(parts["idx"], rows * G * n, _bits(m)).view(rows, G, n)  # m == 1: no bits, position 0
    if bool((idx >= m).any()) or bool((idx[:, :, 1:] <= idx[:, :, :-1]).any()):
        raise ValueError(f"{part_key(name, 'idx')}: positions must be ascending within each group and < {m}")
    counts = torch.full((rows, G), n, dtype=torch.uint8)
    if G * m > cols:  # slots of the last, partial group past the last column are padding: not kept
        tail = idx[:, -1, :].to(torch.int64) + (G - 1) * m >= cols  # (rows, n), ascending: padding slots last
        counts[:, -1] = n - tail.sum(dim=1).to(torch.uint8)
        if bool(values[:, -1, :][tail].any()):  # values at padding are cropped on unpacking: zero here too
            values = values.clone()
            values[:, -1, :].masked_fill_(tail, 0)
    return NMPacked(values, idx, counts, (rows, cols), n, m)


def unpack(name: str, rec: dict, parts: dict[str, torch.Tensor], mask: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(dense weight, bool mask)`` of a packed weight whose parts passed :func:`check_parts`
    (the mask None unless ``mask``: a plain load needs only the weight)."""
    layout, shape = rec["layout"], tuple(rec["shape"])
    rows, cols = _geometry(rec)
    values = parts["values"]
    if layout == "dense":
        return values, torch.ones(shape, dtype=torch.bool) if mask else None
    fmt = native_format(name, rec, parts)
    if fmt is not None:
        return fmt.to_dense(), fmt.to_mask() if mask else None
    if layout == "bitmask":
        flags = unpack_bits(parts["bits"], rows * cols)
        kept = int(np.count_nonzero(flags.numpy()))
        if kept != values.numel():
            raise ValueError(f"{part_key(name, 'bits')}: keeps {kept} entries but {values.numel()} values are stored")
        dense = _expand(flags, values)
        return dense.view(shape), flags.view(shape) if mask else None
    col, crow = parts["col_idx"].to(torch.int64), parts["crow"].to(torch.int64)  # csr
    row = _check_rows(name, crow, col, cols)
    dense = torch.zeros(rows, cols, dtype=values.dtype)
    dense[row, col] = values
    if not mask:
        return dense.view(shape), None
    flags = torch.zeros(rows, cols, dtype=torch.bool)
    flags[row, col] = True
    return dense.view(shape), flags.view(shape)


# -- kernel formats straight from the packed parts (compressor.load of a swapped layer) -----------

#: dense entries per row band when a weight is converted band by band (4 MiB of fp32)
BAND_ENTRIES = 1 << 20


def kernel_format(name: str, rec: dict, parts: dict[str, torch.Tensor], *, block: tuple[int, int] | None = None,
                  layout: str = "auto", nm: tuple[int, int] | None = None) -> BalancedBlock | BSR | NMPacked:
    """The weight in the format a kernel module is built from, without a dense ``(rows, cols)`` copy.

    ``block`` (with ``layout`` ``auto``/``balanced``/``bsr``, as ``BlockSparseLinear.from_dense``
    takes it) asks for a :class:`BalancedBlock` or :class:`BSR`; ``nm = (n, m)`` for an
    :class:`NMPacked`. The result equals ``from_dense`` of the unpacked weight and mask (short block
    rows padded, spare N:M slots placed as it places them), so a loaded kernel module holds exactly
    what the saved one held. A layout storing that format already is used as it is (its values and
    indices; ``bsr`` <-> ``balanced_block`` converted block by block); a ``bitmask``, ``csr`` or
    ``dense`` layout is converted in row bands of at most :data:`BAND_ENTRIES` entries. A mask the
    kernel cannot hold (partial blocks, more than ``n`` of ``m``) is a ValueError naming the tensor.
    """
    from .kernels.modules import BlockSparseLinear

    if (block is None) == (nm is None):
        raise ValueError("kernel_format: give block or nm")
    rows, cols = _geometry(rec)
    if len(rec["shape"]) != 2:
        raise ValueError(f"layouts[{name[:80]!r}]: a kernel module's weight is 2-D, the layout stores {rec['shape']}")
    if layout not in ("auto", "balanced", "bsr"):
        raise ValueError(f"layout must be 'auto', 'balanced' or 'bsr', got {layout!r}")
    native = rec["layout"] in ("balanced_block", "bsr", "nm")
    if native:
        fmt = native_format(name, rec, parts)
        wanted = (tuple(block), "block") if block is not None else (tuple(nm), "nm")
        have = (fmt.block, "block") if rec["layout"] != "nm" else ((fmt.n, fmt.m), "nm")
        if have != wanted:
            raise ValueError(f"layouts[{name[:80]!r}]: a {rec['layout']} layout of {have[0]} cannot feed a kernel "
                             f"module of {wanted[1]} {wanted[0]}")
    else:
        fmt = _from_bands(name, rec, parts, block, nm)
    if nm is not None:
        return _nm_spares(fmt) if native else fmt
    if isinstance(fmt, BSR):
        counts = fmt.crow_indices[1:] - fmt.crow_indices[:-1]
        wanted = BlockSparseLinear.layout_for_counts(counts) if layout == "auto" else layout
        return fmt if wanted == "bsr" else fmt.to_balanced()
    return fmt.to_bsr() if layout == "bsr" else fmt  # a balanced_block layout: every block row keeps k


def _nm_spares(fmt: NMPacked) -> NMPacked:
    """Spare slots (groups keeping fewer than n: only the last, partial group of an ``nm`` layout)
    moved to the positions ``NMPacked.from_dense`` gives them: the smallest positions not kept."""
    if bool((fmt.counts == fmt.n).all()):
        return fmt
    rows, cols = fmt.shape
    m = fmt.m
    short = (fmt.counts < fmt.n).any(dim=0).nonzero().flatten().tolist()
    values, indices, counts = fmt.values.clone(), fmt.indices.clone(), fmt.counts.clone()
    for g in short:  # one (rows, m) slice per group with spare slots
        width = min(m, cols - g * m)
        part = NMPacked(fmt.values[:, g:g + 1], fmt.indices[:, g:g + 1], fmt.counts[:, g:g + 1], (rows, m), fmt.n, m)
        redo = NMPacked.from_dense(part.to_dense()[:, :width], part.to_mask()[:, :width], fmt.n, m)
        values[:, g:g + 1], indices[:, g:g + 1], counts[:, g:g + 1] = redo.values, redo.indices, redo.counts
    return NMPacked(values, indices, counts, fmt.shape, fmt.n, m)


def _from_bands(name: str, rec: dict, parts: dict[str, torch.Tensor], block, nm) -> BSR | NMPacked:
    """A ``bitmask``/``csr``/``dense`` weight as a BSR (``block``) or NMPacked (``nm``), built band by band."""
    rows, cols = _geometry(rec)
    unit = block[0] if block is not None else 1
    height = max(unit, BAND_ENTRIES // max(cols, 1) // unit * unit)
    pieces = []
    for r0, weight, mask in _bands(name, rec, parts, height):
        try:
            if block is not None:
                pieces.append(BSR.from_dense(weight, mask, block))
            else:
                pieces.append(NMPacked.from_dense(weight, mask, *nm))
        except ValueError as exc:  # the band's own row numbers: say where the band starts
            raise ValueError(f"{part_key(name, parts_of(rec)[0])}: rows {r0}..{r0 + weight.shape[0] - 1} do not fit "
                             f"the kernel module ({' '.join(str(exc).split())[:160]})") from None
    if nm is not None:
        cat = lambda key: torch.cat([getattr(p, key) for p in pieces]) if pieces else None  # noqa: E731
        if not pieces:
            return NMPacked.from_dense(torch.zeros(0, cols, dtype=FLOATS[rec["dtype"]]), None, *nm)
        return NMPacked(cat("values"), cat("indices"), cat("counts"), (rows, cols), *nm)
    counts = [p.crow_indices[1:] - p.crow_indices[:-1] for p in pieces]
    crow = torch.zeros(_ceil(rows, block[0]) + 1, dtype=torch.int64)
    if counts:
        crow[1:] = torch.cumsum(torch.cat(counts), 0)
    bh, bw = block
    values = torch.cat([p.values for p in pieces]) if pieces else torch.zeros(0, bh, bw, dtype=FLOATS[rec["dtype"]])
    col = torch.cat([p.col_indices for p in pieces]) if pieces else torch.zeros(0, dtype=torch.int64)
    return BSR(crow, col, values, (rows, cols), tuple(block))


def _bands(name: str, rec: dict, parts: dict[str, torch.Tensor], height: int):
    """``(first row, weight rows, mask rows)`` of a ``dense``/``bitmask``/``csr`` weight, ``height`` rows
    at a time (every index checked first, ValueError naming the tensor)."""
    layout = rec["layout"]
    rows, cols = _geometry(rec)
    values = parts["values"]
    if layout == "bitmask":
        bits = parts["bits"]
        kept = _popcount(bits, rows * cols)
        if kept != values.numel():
            raise ValueError(f"{part_key(name, 'bits')}: keeps {kept} entries but {values.numel()} values are stored")
    elif layout == "csr":
        col, crow = parts["col_idx"].to(torch.int64), parts["crow"].to(torch.int64)
        row = _check_rows(name, crow, col, cols)
    done = 0  # values used so far (bitmask)
    for r0 in range(0, rows, height):
        r1 = min(rows, r0 + height)
        if layout == "dense":
            weight = values.reshape(rows, cols)[r0:r1]
            yield r0, weight, torch.ones(weight.shape, dtype=torch.bool)
            continue
        if layout == "bitmask":
            e0, e1 = r0 * cols, r1 * cols
            first = e0 // 8
            mask = unpack_bits(bits[first:_ceil(e1, 8)], e1 - first * 8)[e0 - first * 8:].view(r1 - r0, cols)
            k = int(np.count_nonzero(mask.numpy()))
            weight = _expand(mask.reshape(-1), values[done:done + k]).view(r1 - r0, cols)
            done += k
        else:  # csr
            a, b = int(crow[r0]), int(crow[r1])
            weight = torch.zeros(r1 - r0, cols, dtype=values.dtype)
            mask = torch.zeros(r1 - r0, cols, dtype=torch.bool)
            weight[row[a:b] - r0, col[a:b]] = values[a:b]
            mask[row[a:b] - r0, col[a:b]] = True
        yield r0, weight, mask
