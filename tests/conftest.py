"""Shared fixtures for the foundation tests (tiny models live in fixture_models.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def load_fixture():
    """Load a fixture model through the real loader: load_fixture("mlp") -> ModelSpec."""
    from fixture_models import ref

    from compressor.loading import load_model

    def load(name: str, checkpoint=None):
        return load_model(ref(name), checkpoint)

    return load
