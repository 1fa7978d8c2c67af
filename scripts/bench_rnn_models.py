"""Random-weight recurrent LMs for ``compress bench model`` at sizes where the recurrence dominates.

``compress --model scripts/bench_rnn_models.py:lstm_lm_1024 --recipe scripts/bench_rnn_block90.yaml``
builds a 2-layer LSTM LM with hidden 1024 (``gru_lm_1536``: a 2-layer GRU LM with hidden 1536),
prunes its recurrent layers to 90% balanced 32x32 blocks and installs the sparse kernels, so that
``compress bench model DIR --model scripts/bench_rnn_models.py:lstm_lm_1024 --input 1x128:int64``
times the compressed forward against ``nn.LSTM`` / ``nn.GRU`` with the same masked weights. The
weights are random (seeded by the recipe): only speed is measured with these, not quality.
"""

from __future__ import annotations

import torch
import torch.nn as nn

VOCAB = 104


class RecurrentLM(nn.Module):
    """Embedding -> nn.LSTM / nn.GRU (batch_first) -> Linear decoder; tokens (B, T) -> logits (B, T, V)."""

    def __init__(self, kind: str, hidden: int, layers: int = 2, embedding: int = 256):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, embedding)
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(embedding, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(tokens))
        return self.decoder(out)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, VOCAB, (2, 32)),)


def lstm_lm_1024() -> nn.Module:
    return RecurrentLM("lstm", 1024)


def gru_lm_1536() -> nn.Module:
    return RecurrentLM("gru", 1536)
