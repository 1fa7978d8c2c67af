"""Tiny models for the foundation tests, loadable as factories ('tests/fixture_models.py:mlp')."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 48)
        self.fc2 = nn.Linear(48, 36)
        self.head = nn.Linear(36, 5)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def example_inputs(self):
        return (torch.randn(3, 20),)


class RNNLM(nn.Module):
    """Embedding -> LSTM/GRU -> Linear, the shape of a small language model."""

    def __init__(self, cell="lstm", vocab=30, emb=12, hidden=20, layers=2, bidirectional=False):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn_cls(emb, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.decoder = nn.Linear(hidden * (2 if bidirectional else 1), vocab)

    def forward(self, tokens):
        out, _ = self.rnn(self.embedding(tokens))
        return self.decoder(out)

    def example_inputs(self):
        return (torch.randint(0, 30, (2, 7)),)


class DataDependent(nn.Module):
    """Control flow on tensor values: neither symbolic_trace nor export can trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x):
        if x.sum() > 0:
            return self.b(torch.relu(self.a(x)))
        return self.a(torch.relu(self.b(x)))

    def example_inputs(self):
        return (torch.randn(4, 16),)


class ShapeDependent(nn.Module):
    """Control flow on a shape: symbolic_trace rejects it, torch.export handles it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 0.5
        return self.fc(x)

    def example_inputs(self):
        return (torch.randn(4, 16),)


class FunctionalLinear(nn.Module):
    """Calls F.linear on its own parameter (no nn.Linear)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(24, 16) * 0.1)
        self.out = nn.Linear(24, 4)

    def forward(self, x):
        return self.out(torch.tanh(F.linear(x, self.proj)))

    def example_inputs(self):
        return (torch.randn(3, 16),)


class TiedLM(nn.Module):
    """Decoder weight tied to the embedding."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embedding.weight

    def forward(self, tokens):
        return self.decoder(torch.tanh(self.mix(self.embedding(tokens))))

    def example_inputs(self):
        return (torch.randint(0, 32, (2, 5)),)


def mlp():
    return MLP()


def lstm_lm():
    return RNNLM("lstm")


def gru_lm():
    return RNNLM("gru", hidden=18)


def bilstm():
    return RNNLM("lstm", hidden=20, layers=2, bidirectional=True)


def data_dependent():
    return DataDependent()


def shape_dependent():
    return ShapeDependent()


def functional_linear():
    return FunctionalLinear()


def tied_lm():
    return TiedLM()


def ref(factory: str) -> str:
    """The --model reference of a factory in this file."""
    return f"{HERE}:{factory}"


class CalibrationOnlyTask:
    """A user task that only feeds calibration: ``rows`` rows of MLP input per batch, ``batches``
    batches (None: without end), then ``StopIteration`` as a task that runs out of data would."""

    def __init__(self, rows: int, batches: int | None):
        self.rows, self.batches, self.calls = rows, batches, 0

    def batch(self, step, rank=0, world=1):
        if self.batches is not None and self.calls >= self.batches:
            raise StopIteration
        self.calls += 1
        return (torch.randn(self.rows, 20),)

    def inputs(self, batch):
        return batch

    def loss(self, model, batch):
        raise NotImplementedError

    def evaluate(self, model):
        return {}


def empty_batches_task(config, spec, teacher):
    return CalibrationOnlyTask(rows=0, batches=None)


def three_batches_task(config, spec, teacher):
    return CalibrationOnlyTask(rows=8, batches=3)


def no_batches_task(config, spec, teacher):
    return CalibrationOnlyTask(rows=8, batches=0)


class SeededMLPTask(CalibrationOnlyTask):
    """Calibration batches of 32 MLP input rows, a pure function of the step (tests recompute them)."""

    def __init__(self):
        super().__init__(rows=32, batches=None)

    def batch(self, step, rank=0, world=1):
        return (torch.randn(32, 20, generator=torch.Generator().manual_seed(step)),)


def seeded_mlp_task(config, spec, teacher):
    return SeededMLPTask()


def trusted_ref(directory) -> str | None:
    """The factory an artifact was made from, when it is one of this file's (None otherwise).

    Loading an artifact never runs code it names: the caller passes the code. The test suite
    trusts its own factories, so it passes the one the artifact names after checking that it
    lives in this file."""
    from compressor.artifacts import read_metadata

    source = read_metadata(directory)["source"]
    if source["kind"] != "factory":
        return None
    if not source["ref"].startswith(f"{HERE}:"):
        raise AssertionError(f"not a factory of the test suite: {source['ref']}")
    return source["ref"]


def load_trusted(directory, **kwargs):
    """``compressor.load`` for artifacts made from this file's factories (see :func:`trusted_ref`)."""
    import compressor

    if "model" not in kwargs:
        kwargs["model"] = trusted_ref(directory)
    return compressor.load(directory, **kwargs)
