"""``tiny-encoder``: a small transformer-style encoder with explicit q/k/v/o and FFN Linears.

It exists to exercise the toolkit on attention-shaped models (as Hugging Face encoders lay them
out: separate projection Linears, LayerNorm, GELU) without downloading anything. Its weights
are a fixed random initialisation (seed 0), so it is measured by output error against itself
dense, not by a task metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["EncoderConfig", "TinyEncoder"]


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 1000
    dim: int = 256
    heads: int = 4
    ffn: int = 1024
    layers: int = 2
    max_len: int = 128


class _Block(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.heads = c.heads
        self.q, self.k, self.v, self.o = (nn.Linear(c.dim, c.dim) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(c.dim), nn.LayerNorm(c.dim)
        self.fc1, self.fc2 = nn.Linear(c.dim, c.ffn), nn.Linear(c.ffn, c.dim)

    def forward(self, x):
        B, T, D = x.shape
        h = self.norm1(x)

        def split(t):
            return t.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, D/H)

        att = (split(self.q(h)) @ split(self.k(h)).transpose(-1, -2)) / math.sqrt(D // self.heads)
        ctx = (att.softmax(-1) @ split(self.v(h))).transpose(1, 2).reshape(B, T, D)
        x = x + self.o(ctx)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyEncoder(nn.Module):
    """Token ids (B, T) -> hidden states (B, T, dim)."""

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.pos = nn.Parameter(torch.randn(config.max_len, config.dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def example_inputs(self):
        return (torch.randint(0, self.config.vocab_size, (2, 32)),)
