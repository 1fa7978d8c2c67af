"""Pictures of layer masks for the HTML report, encoded as PNG with the standard library only.

Each layer gets one :class:`MaskPicture`, computed from its mask in the artifact (masks are not in
report.json) and the pattern in its report row:

- block patterns: one cell per block, dark = kept, light = pruned; unstructured and dense layers:
  one cell per weight. A grid larger than :data:`MAX_CELLS` on a side is pooled into square
  groups of cells whose shade is the kept fraction, and the caption says the scale;
- N:M: a zoomed tile of the top-left weights, one cell per weight, the groups of M in
  alternating shades so that "N of every M" can be seen;
- input-dependent (gated) layers: when the row carries ``block_keep_frequency``, a heat map of
  how often each block was kept on calibration data.

The PNG encoder writes 8-bit RGB (or grey) with filter 0 and zlib: ~20 lines instead of a plotting
dependency.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import ArtifactError

__all__ = ["MaskPicture", "MAX_CELLS", "layer_picture", "kept_fraction_grid", "encode_png", "COLORS"]

MAX_CELLS = 256       # at most this many cells on a side; larger grids are pooled
DISPLAY_PX = 320      # cells are drawn so that the longer side is about this many pixels
MIN_DISPLAY_PX = 120  # small matrices are shown at 2 px per weight, but no smaller than this
MAX_CELL_PX = 16
TILE_ROWS, TILE_GROUPS = 16, 8   # N:M tile view: 16 rows x 8 groups of M

COLORS = {
    "kept": (31, 78, 140), "pruned": (232, 236, 242),        # blocks view, shaded in between
    "kept_alt": (74, 128, 196), "pruned_alt": (205, 213, 225),  # N:M tile: odd groups
    "missing": (190, 190, 190),
    # keep-frequency heat map: 0 -> 0.5 -> 1
    "freq": ((255, 247, 214), (239, 138, 48), (127, 16, 22)),
}


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) grey or (H, W, 3) RGB uint8 array (filter 0, zlib level 6)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3) or 0 in pixels.shape:
        raise ValueError(f"encode_png needs a non-empty (H, W) or (H, W, 3) array, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    raw = np.zeros((height, 1 + pixels[0].size), dtype=np.uint8)   # (H, 1 + W*channels): filter byte 0
    raw[:, 1:] = pixels.reshape(height, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def kept_fraction_grid(mask: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Fraction of kept entries in every ``block`` of a 2-D mask; edge blocks count their real entries."""
    bh, bw = block
    rows, cols = mask.shape
    R, C = math.ceil(rows / bh), math.ceil(cols / bw)
    padded = np.zeros((R * bh, C * bw), dtype=np.float64)
    padded[:rows, :cols] = mask
    real = np.zeros_like(padded)
    real[:rows, :cols] = 1.0
    kept = padded.reshape(R, bh, C, bw).sum(axis=(1, 3))    # (R, C)
    return kept / real.reshape(R, bh, C, bw).sum(axis=(1, 3))


@dataclass
class MaskPicture:
    """One layer's picture: a grid of cells with values in [0, 1], how to colour it, and its scale."""

    name: str
    view: str                 # "blocks" | "tile" | "frequency" | "missing"
    cells: np.ndarray         # (R, C) kept fraction (blocks, tile) or keep frequency (frequency)
    caption: str              # the scale, in words
    legend: str               # what the colours mean, beyond "dark = kept, light = pruned" ("" if nothing)
    group: int = 0            # tile view: columns per N:M group (alternating shades)
    extent: tuple[int, int] | None = None   # (rows, cols) of weights the cells cover; None: tile view

    @property
    def cell_px(self) -> int:
        """Pixels per cell side in the PNG."""
        return max(1, min(MAX_CELL_PX, DISPLAY_PX // max(self.cells.shape)))

    def colors(self) -> np.ndarray:
        """(R, C, 3) uint8: one colour per cell."""
        v = np.clip(self.cells, 0.0, 1.0)[..., None]                      # (R, C, 1)
        if self.view == "frequency":
            lo, mid, hi = (np.array(c, dtype=np.float64) for c in COLORS["freq"])
            rgb = np.where(v < 0.5, lo + (mid - lo) * (v * 2), mid + (hi - mid) * (v * 2 - 1))
        elif self.view == "missing":
            rgb = np.broadcast_to(np.array(COLORS["missing"], dtype=np.float64), v.shape[:2] + (3,))
        else:
            kept, pruned = np.array(COLORS["kept"], dtype=np.float64), np.array(COLORS["pruned"], dtype=np.float64)
            rgb = pruned + (kept - pruned) * v
            if self.view == "tile" and self.group:
                odd = ((np.arange(self.cells.shape[1]) // self.group) % 2 == 1)[None, :, None]   # (1, C, 1)
                alt = np.array(COLORS["pruned_alt"], dtype=np.float64) + (
                    np.array(COLORS["kept_alt"], dtype=np.float64) - np.array(COLORS["pruned_alt"], dtype=np.float64)) * v
                rgb = np.where(odd, alt, rgb)
        return np.rint(rgb).astype(np.uint8)

    def pixels(self) -> np.ndarray:
        """(R * px, C * px, 3) uint8: cells enlarged to ``cell_px``, with a faint grid when cells are big."""
        px = self.cell_px
        image = np.repeat(np.repeat(self.colors(), px, axis=0), px, axis=1)
        if px >= 6:   # a 1-px lighter edge on each cell makes individual blocks countable
            edge = image.astype(np.float64)
            edge[px - 1::px, :] = edge[px - 1::px, :] * 0.7 + 255 * 0.3
            edge[:, px - 1::px] = edge[:, px - 1::px] * 0.7 + 255 * 0.3
            image = np.rint(edge).astype(np.uint8)
        return image

    def png(self) -> bytes:
        return encode_png(self.pixels())

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the PNG in pixels."""
        return self.cells.shape[1] * self.cell_px, self.cells.shape[0] * self.cell_px

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) to show it at: the weight matrix scaled to a longer side of 2 px per weight,
        clamped to [MIN_DISPLAY_PX, DISPLAY_PX].

        Two pictures of the same matrix show at the same size whatever their block size, so A and
        B of a comparison line up; the tile view is shown at its own pixel size.
        """
        if self.extent is None:
            return self.size
        rows, cols = self.extent
        scale = min(DISPLAY_PX, max(MIN_DISPLAY_PX, 2 * max(rows, cols))) / max(rows, cols)
        return max(4, round(cols * scale)), max(4, round(rows * scale))


def _as_matrix(mask, shape: list[int], name: str) -> np.ndarray:
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if list(array.shape) != list(shape):
        raise ArtifactError(f"layer {name}: mask shape {list(array.shape)} does not match the report's {list(shape)}")
    array = array.astype(bool)
    return array.reshape(1, -1) if array.ndim == 1 else array.reshape(array.shape[0], -1)


def _pool_factor(rows: int, cols: int) -> int:
    return max(1, math.ceil(max(rows, cols) / MAX_CELLS))


def _frequency_picture(row) -> MaskPicture:
    freq = np.asarray(row.block_keep_frequency, dtype=np.float64)
    if freq.ndim != 2 or freq.size == 0 or not np.all(np.isfinite(freq)) or freq.min() < 0 or freq.max() > 1:
        raise ArtifactError(f"layer {row.name}: block_keep_frequency must be a non-empty 2-D array of fractions in [0, 1]")
    rows, cols = row.shape[0], int(np.prod(row.shape[1:])) if len(row.shape) > 1 else 1
    bh, bw = math.ceil(rows / freq.shape[0]), math.ceil(cols / freq.shape[1])
    f = _pool_factor(*freq.shape)
    legend = "shade = share of calibration inputs on which the gate kept the block"
    extent = (freq.shape[0] * bh, freq.shape[1] * bw)
    if f == 1:
        caption = f"1 cell = one {bh} x {bw} block ({freq.shape[0]} x {freq.shape[1]} blocks)"
    else:
        freq = kept_fraction_grid(freq, (f, f))    # mean frequency over f x f blocks
        caption = f"1 cell = {f} x {f} blocks of {bh} x {bw}, mean keep frequency"
        extent = (freq.shape[0] * bh * f, freq.shape[1] * bw * f)
    return MaskPicture(row.name, "frequency", freq, caption, legend, extent=extent)


def _tile_picture(row, mask: np.ndarray) -> MaskPicture:
    n, m = int(row.pattern_spec.get("n", 2)), int(row.pattern_spec.get("m", 4))
    tile = mask[:TILE_ROWS, : TILE_GROUPS * m].astype(np.float64)
    r, c = tile.shape
    caption = (f"top-left {r} x {c} of {mask.shape[0]} x {mask.shape[1]} weights, 1 cell = 1 weight; "
               f"groups of {m} in alternating shades, each keeps at most {n}")
    return MaskPicture(row.name, "tile", tile, caption, "", group=m)


def layer_picture(row, mask=None) -> MaskPicture:
    """The picture of one report row (:class:`compressor.report.LayerRow`) from its mask.

    ``mask`` is the layer's bool mask (tensor or array) or None when the artifact has none
    (dense layers; the picture is then all kept, or grey for a pruned pattern without a mask).
    A row with ``block_keep_frequency`` is drawn as a keep-frequency heat map instead.
    """
    if getattr(row, "block_keep_frequency", None) is not None:
        return _frequency_picture(row)
    spec = row.pattern_spec or {}
    kind = spec.get("kind", "dense")
    if mask is None:
        if kind != "dense":
            return MaskPicture(row.name, "missing", np.ones((8, 8)), "no mask stored in the artifact for this layer", "")
        mask = np.ones(row.shape, dtype=bool)
    matrix = _as_matrix(mask, row.shape, row.name)
    if kind == "nm":
        return _tile_picture(row, matrix)
    block = (int(spec["h"]), int(spec["w"])) if "h" in spec and "w" in spec else (1, 1)
    grid_rows, grid_cols = math.ceil(matrix.shape[0] / block[0]), math.ceil(matrix.shape[1] / block[1])
    f = _pool_factor(grid_rows, grid_cols)
    cells = kept_fraction_grid(matrix, (block[0] * f, block[1] * f))
    unit = "weight" if block == (1, 1) else f"{block[0]} x {block[1]} block"
    plural = "weights" if block == (1, 1) else "blocks"
    if f == 1:
        article = "1" if block == (1, 1) else "one"
        caption = f"1 cell = {article} {unit} ({grid_rows} x {grid_cols} {plural})"
        legend = ""
    else:
        caption = (f"1 cell = {f} x {f} {unit}s ({grid_rows} x {grid_cols} {plural} pooled to "
                   f"{cells.shape[0]} x {cells.shape[1]})")
        legend = "shade = kept fraction"
    if kind == "dense":
        legend = "dense: every weight kept"
    extent = (cells.shape[0] * block[0] * f, cells.shape[1] * block[1] * f)
    return MaskPicture(row.name, "blocks", cells, caption, legend, extent=extent)
