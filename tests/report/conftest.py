"""Fixtures for the report tests: two small artifacts, an independent PNG decoder, an HTML reader."""

from __future__ import annotations

import io
import struct
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest
from rich.console import Console

QUIET = Console(file=io.StringIO())
# A: balanced blocks on the LSTM, 2:4 on the decoder; B: unstructured everywhere.
RECIPE_A = {"version": 1, "passes": [
    {"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True},
    {"pass": "nm_prune", "targets": ["decoder"], "n": 2, "m": 4}]}
RECIPE_B = {"version": 1, "passes": [{"pass": "unstructured_prune", "sparsity": 0.7}]}


def _artifact(directory, recipe):
    from fixture_models import ref

    import compressor
    from compressor.recipe import parse_recipe

    spec = compressor.load_model(ref("lstm_lm"))
    compressor.Pipeline(parse_recipe(recipe)).run(spec, out=directory, console=QUIET)
    return directory


@pytest.fixture(scope="session")
def artifact_a(tmp_path_factory):
    """An artifact of the fixture LSTM LM: balanced 4x4 blocks + 2:4 decoder."""
    return _artifact(tmp_path_factory.mktemp("report") / "a", RECIPE_A)


@pytest.fixture(scope="session")
def artifact_b(tmp_path_factory):
    """The same model pruned unstructured to 70%."""
    return _artifact(tmp_path_factory.mktemp("report") / "b", RECIPE_B)


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit grey or RGB, non-interlaced PNG whose rows all use filter 0 (what we write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, f"bad CRC in {tag!r}"
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and interlace == 0 and color in (0, 2)
    channels = 3 if color == 2 else 1
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all(), "decoder handles filter 0 only"
    pixels = raw[:, 1:].reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels


class Page(HTMLParser):
    """What the tests need from an HTML page: images, table cells, tags and outside references."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.tables: dict[str, list[dict]] = {}   # table id -> rows: {"layer": name, "cells": {key: (value, text)}}
        self._table = None
        self._row = None
        self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("data:", "#")):   # in-page anchors are fine
                self.urls.append(a[key])
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = {"layer": a.get("data-layer") or a.get("data-metric"), "cells": {}}
            self._table.append(self._row)
        elif tag == "td" and self._row is not None and "data-key" in a:
            self._cell = [a["data-key"], a["data-value"], ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            import json

            key, value, text = self._cell
            self._row["cells"][key] = (json.loads(value), text.strip())
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture
def parse_page():
    return Page


@pytest.fixture
def png_of():
    """Decode an <img> data: URI back to pixels."""
    import base64

    def decode(src: str) -> np.ndarray:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        return decode_png(base64.b64decode(src[len(prefix):]))

    return decode


@pytest.fixture
def png_decode():
    """The decoder itself: bytes -> (H, W[, 3]) uint8."""
    return decode_png
