"""Models for the report tests, loadable as factories ('tests/report/report_models.py:deep_mlp')."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve()


class DeepMLP(nn.Module):
    """``depth`` square Linear layers with ReLU between them: a report with many rows."""

    def __init__(self, depth: int = 100, width: int = 64):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.width = width

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x

    def example_inputs(self):
        return (torch.randn(2, self.width),)


def deep_mlp():
    return DeepMLP()
