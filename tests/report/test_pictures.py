"""Mask pictures: known masks give known cells and known pixels (decoded independently)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.errors import ArtifactError
from compressor.mask_pictures import encode_png, layer_picture
from compressor.report import LayerRow

KEPT, PRUNED = (31, 78, 140), (232, 236, 242)   # the documented palette, spelled out independently


def row(name="w", shape=(32, 48), spec=None, **extra):
    n = int(np.prod(shape))
    return LayerRow(name=name, kind="linear", shape=list(shape), pattern="p", pattern_spec=spec or {"kind": "dense"},
                    target_sparsity=0.5, sparsity=0.5, params=n, nonzero=n // 2, dense_bytes=4 * n,
                    compressed_bytes=2 * n, dense_flops=2 * n, compressed_flops=n, **extra)


def cell_centres(pixels, rows, cols):
    """The colour at the centre of every cell of a (rows x cols) picture: (rows, cols, 3)."""
    h, w = pixels.shape[:2]
    ys = (np.arange(rows) * h // rows) + h // rows // 2
    xs = (np.arange(cols) * w // cols) + w // cols // 2
    return pixels[ys][:, xs]


def test_checkerboard_of_blocks_has_the_expected_cells_and_pixels(png_decode):
    blocks = np.add.outer(np.arange(4), np.arange(6)) % 2 == 0            # (4, 6) block checkerboard
    mask = torch.from_numpy(np.kron(blocks, np.ones((8, 8), dtype=bool)))  # (32, 48)
    pic = layer_picture(row(spec={"kind": "block", "h": 8, "w": 8}), mask)
    assert pic.cells.shape == (4, 6)
    assert np.array_equal(pic.cells, blocks.astype(float))
    assert "1 cell = one 8 x 8 block" in pic.caption and "4 x 6" in pic.caption

    pixels = png_decode(pic.png())
    px = pic.cell_px
    assert pixels.shape == (4 * px, 6 * px, 3) and px > 1
    centres = cell_centres(pixels, 4, 6)
    expected = np.where(blocks[..., None], np.array(KEPT), np.array(PRUNED))
    assert np.array_equal(centres, expected)
    # the top-left pixel of each cell too (the faint grid is only on the right/bottom edge)
    assert np.array_equal(pixels[::px, ::px], expected)


def test_partial_edge_blocks_count_their_real_entries():
    mask = np.zeros((10, 10), dtype=bool)
    mask[8:, 8:] = True                       # the 2 x 2 corner block (of 4 x 4 blocks) is whole
    mask[0:4, 4:8] = True
    pic = layer_picture(row(shape=(10, 10), spec={"kind": "block", "h": 4, "w": 4}), mask)
    expected = np.zeros((3, 3))
    expected[2, 2] = expected[0, 1] = 1.0
    assert np.array_equal(pic.cells, expected)


def test_large_layers_are_pooled_and_say_their_scale(png_decode):
    mask = np.zeros((1024, 512), dtype=bool)
    mask[:, :256] = True                       # left half kept
    mask[0::4, 256::4] = True                  # right half: 1 of every 16 weights kept
    pic = layer_picture(row(shape=(1024, 512), spec={"kind": "unstructured"}), mask)
    assert pic.cells.shape == (256, 128)      # 4 x 4 weights per cell, at most 256 cells a side
    assert np.all(pic.cells[:, :64] == 1.0) and np.allclose(pic.cells[:, 64:], 1 / 16)
    assert "1 cell = 4 x 4 weights" in pic.caption and "kept fraction" in pic.legend
    shade = np.rint(np.array(PRUNED) + (np.array(KEPT) - np.array(PRUNED)) / 16)
    pixels = png_decode(pic.png())
    assert tuple(pixels[0, -1]) == tuple(shade.astype(int)) and tuple(pixels[0, 0]) == KEPT


def test_nm_layers_show_a_zoomed_tile_with_groups(png_decode):
    mask = np.zeros((40, 100), dtype=bool)
    mask[:, 0::4] = mask[:, 1::4] = True     # 2:4, keep the first two of every group
    pic = layer_picture(row(shape=(40, 100), spec={"kind": "nm", "n": 2, "m": 4}), mask)
    assert pic.view == "tile" and pic.cells.shape == (16, 32)
    assert np.array_equal(pic.cells, mask[:16, :32].astype(float))
    assert "top-left 16 x 32 of 40 x 100" in pic.caption and "groups of 4" in pic.caption
    centres = cell_centres(png_decode(pic.png()), 16, 32)
    assert tuple(centres[0, 0]) == KEPT and tuple(centres[0, 2]) == PRUNED
    # the next group is drawn in the other shade, so groups can be told apart
    assert tuple(centres[0, 4]) != KEPT and tuple(centres[0, 6]) != PRUNED
    assert tuple(centres[0, 8]) == KEPT


def test_block_keep_frequency_is_drawn_as_a_heat_map(png_decode):
    freq = [[0.0, 0.5, 1.0], [1.0, 0.25, 0.0]]
    gated = row(shape=(32, 48), spec={"kind": "gated", "h": 16, "w": 16, "keep": 0.5}, block_keep_frequency=freq)
    pic = layer_picture(gated, None)           # gated layers have no static mask
    assert pic.view == "frequency" and np.array_equal(pic.cells, np.array(freq))
    assert "one 16 x 16 block" in pic.caption
    centres = cell_centres(png_decode(pic.png()), 2, 3)
    assert tuple(centres[0, 0]) == (255, 247, 214) and tuple(centres[0, 2]) == (127, 16, 22)
    assert tuple(centres[0, 1]) == (239, 138, 48)


@pytest.mark.parametrize("freq", [[[0.0, 1.5]], [0.1, 0.2], [[float("nan")]], []])
def test_bad_keep_frequency_is_an_artifact_error(freq):
    with pytest.raises(ArtifactError, match="block_keep_frequency"):
        layer_picture(row(block_keep_frequency=freq), None)


def test_mask_of_the_wrong_shape_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="does not match"):
        layer_picture(row(shape=(32, 48), spec={"kind": "unstructured"}), np.ones((48, 32), dtype=bool))


def test_dense_and_missing_masks():
    dense = layer_picture(row(shape=(8, 8)), None)
    assert dense.view == "blocks" and np.all(dense.cells == 1.0)
    missing = layer_picture(row(spec={"kind": "block", "h": 4, "w": 4}), None)
    assert missing.view == "missing" and "no mask" in missing.caption


def test_png_encoder_round_trips_grey_and_rgb(png_decode):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (7, 13), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
    assert np.array_equal(png_decode(encode_png(grey)), grey)
    assert np.array_equal(png_decode(encode_png(rgb)), rgb)
    with pytest.raises(ValueError):
        encode_png(np.zeros((0, 4), dtype=np.uint8))
