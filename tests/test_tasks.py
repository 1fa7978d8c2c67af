"""What the built-in tasks feed a model: shapes, dtypes and which dimension is the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compressor
from compressor.errors import RecipeError
from compressor.recipe import parse_recipe
from compressor.tasks import TaskConfig, build_task


class SeqFirst(nn.Module):
    """A sequence-first LSTM regressor: inputs (T, B, F)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(6, 8)  # batch_first=False
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _spec(model, example):
    return compressor.ModelSpec(model, example, {"kind": "factory", "ref": "test"})


def test_distill_keeps_a_sequence_first_models_sequence_length():
    """Dimension 0 was taken for the batch: a (7, 2, 6) sequence-first input came out (32, 2, 6),
    the batch size as its sequence length."""
    model = SeqFirst()
    spec = _spec(model, (torch.randn(7, 2, 6),))
    task = build_task(TaskConfig(name="distill", batch_size=4), spec, model)
    (x,) = task.batch(0)
    assert x.shape == (7, 4, 6)
    assert task.batch(0, rank=1, world=2)[0].shape == (7, 2, 6)
    torch.testing.assert_close(task.batch(0, rank=1, world=2)[0], x[:, 2:])  # rank 1's half of the batch
    # an explicit batch_dim wins over the guess
    (y,) = build_task(TaskConfig(name="distill", batch_size=4, batch_dim=0), spec, model).batch(0)
    assert y.shape == (4, 2, 6)


def test_distill_on_batch_first_models_and_the_auto_calibration(load_fixture):
    spec = load_fixture("mlp")  # float inputs (3, 20), no batch_first layers
    (x,) = build_task(TaskConfig(name="distill", batch_size=5), spec, spec.model).batch(0)
    assert x.shape == (5, 20) and x.dtype == torch.float32
    (a,) = build_task(TaskConfig(name="auto", batch_size=5), spec, None).batch(0)  # calibration: no teacher needed
    assert a.shape == (5, 20)
    lm = load_fixture("lstm_lm")  # batch_first=True LSTM on token ids
    (t,) = build_task(TaskConfig(name="distill", batch_size=5), lm, lm.model).batch(0)
    assert t.shape[0] == 5 and t.dtype == torch.int64 and t.shape[1:] == lm.example_inputs[0].shape[1:]


def test_batch_dim_is_range_checked():
    with pytest.raises(RecipeError) as info:
        parse_recipe({"version": 1, "passes": [{"pass": "finetune", "train": {"task": {"name": "distill",
                                                                                       "batch_dim": -1}}}]})
    assert info.value.path == "passes[0].train.task.batch_dim"
