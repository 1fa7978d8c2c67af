"""The built-in ``lstm-lm``: a 2-layer character-level LSTM language model.

Character level keeps the vocabulary tiny (about 100 symbols, no tokenizer) so almost all
parameters sit in the LSTM weights the toolkit compresses: embedding 64, hidden 256, two
layers, a Linear decoder. It is trained on the Python documentation text of the standard
library (:func:`compressor.corpus.pydoc_text`) by ``scripts/train_builtin.py lstm-lm``; the checkpoint
ships as ``lstm_lm.safetensors`` with its vocabulary and hyper-parameters in the metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..corpus import CharVocab, pydoc_text, split_text
from ..tasks import perplexity  # noqa: F401  (the LM's held-out metric; callers import it from here too)
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["LSTMConfig", "LSTMLanguageModel", "CHECKPOINT", "perplexity", "train", "load_pretrained"]

CHECKPOINT = Path(__file__).with_name("lstm_lm.safetensors")


@dataclass(frozen=True)
class LSTMConfig:
    """Hyper-parameters of the built-in LSTM language model."""

    vocab_size: int = 104
    embedding: int = 64
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1


class LSTMLanguageModel(nn.Module):
    """Embedding -> nn.LSTM (batch_first) -> Linear decoder; tokens (B, T) -> logits (B, T, V)."""

    def __init__(self, config: LSTMConfig = LSTMConfig()):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding)
        self.rnn = nn.LSTM(
            config.embedding, config.hidden, config.layers, batch_first=True, dropout=config.dropout
        )
        self.decoder = nn.Linear(config.hidden, config.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)  # (B, T, E)
        out, _ = self.rnn(x)  # (B, T, H)
        return self.decoder(out)  # (B, T, V)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs used for tracing and export: one batch of 2 sequences of 32 tokens."""
        return (torch.randint(0, self.config.vocab_size, (2, 32)),)


def _batches(ids: torch.Tensor, steps: int, batch: int, seq_len: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    high = ids.numel() - seq_len - 1
    for _ in range(steps):
        starts = torch.randint(0, high, (batch,), generator=gen)
        offsets = torch.arange(seq_len + 1)
        window = ids[starts[:, None] + offsets]  # (B, T+1)
        yield window[:, :-1], window[:, 1:]


def train(
    out: Path = CHECKPOINT,
    steps: int = 1200,
    batch: int = 32,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 100,
) -> dict:
    """Train the built-in model from scratch on the pydoc corpus and save it with safetensors.

    Deterministic for a given seed and torch build (fixed data order, fixed init).
    Returns the metadata written next to the weights (config, vocab, perplexities).
    """
    from ..training import optimisation_steps  # the toolkit's one optimisation step (not at import: tasks import models)

    torch.manual_seed(seed)
    text = pydoc_text()
    vocab = CharVocab.from_text(text)
    splits = split_text(text)
    train_ids, valid_ids = vocab.encode(splits.train), vocab.encode(splits.valid)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=len(vocab)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    data = iter(_batches(train_ids, steps, batch, seq_len, seed))
    losses: list[torch.Tensor] = []

    def loss_at(step: int) -> torch.Tensor:
        x, y = next(data)
        losses[:] = [F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))]
        return losses[0]

    for step, _ in optimisation_steps(list(model.parameters()), opt, sched, range(1, steps + 1), loss_at, clip=1.0):
        loss = losses[0]
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps} loss {loss.item():.3f} valid ppl {perplexity(model, valid_ids[:20000]):.3f}", flush=True)
    trained = {"steps": steps, "batch": batch, "seq_len": seq_len, "lr": lr, "seed": seed,
               "valid_perplexity": perplexity(model, valid_ids)}
    return save_checkpoint(out, model, model.config, vocab, trained)


def load_pretrained(path: Path = CHECKPOINT) -> tuple[LSTMLanguageModel, CharVocab]:
    """The shipped checkpoint as a model in eval mode, plus its vocabulary."""
    return load_checkpoint(path, LSTMLanguageModel, LSTMConfig, "lstm-lm")
