"""The built-in ``char-encoder``: a trained transformer encoder (masked character model).

The random-weight ``tiny-encoder`` exercises attention-shaped layers, but its inputs are near
isotropic, so it says little about how compression passes behave on a trained network (layer-wise
reconstruction in particular gains most where inputs are correlated, as in trained models). This
model has the same body (:class:`~compressor.models.encoder.TinyEncoder`: 2 pre-norm blocks, dim
256, 4 heads, FFN 1024, separate q/k/v/o Linears) and a Linear head over the characters, trained
BERT-style on the Python documentation text: 15% of the positions are replaced by a ``[MASK]`` id
(one past the character ids) and the model predicts the original characters there. Its metric is
the masked-character perplexity on the test split (:func:`masked_perplexity`, fixed seeded masks).

Calibration and fine-tuning should see what the model sees at inference, masked text: the task
``compressor.models.char_encoder:masked_lm_task`` (a recipe's ``task: {name: ...}``) gives masked
windows of the corpus, the masked-character loss and the masked perplexity on the validation split.
Calibrating on unmasked text instead fits every layer to inputs without ``[MASK]`` tokens, exactly
the positions the metric scores (``compress bench nm`` measured that as a 5x worse perplexity).

``scripts/train_builtin.py char-encoder`` retrains it; the checkpoint ships as ``char_encoder.safetensors``
with the vocabulary and hyper-parameters in its metadata.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..corpus import CharVocab, pydoc_text, split_text
from .checkpoint import load_checkpoint, save_checkpoint
from .encoder import EncoderConfig, TinyEncoder

__all__ = ["CharEncoder", "CHECKPOINT", "MASK_FRACTION", "mask_tokens", "masked_perplexity", "masked_lm_task", "train",
           "load_pretrained"]

CHECKPOINT = Path(__file__).with_name("char_encoder.safetensors")
MASK_FRACTION = 0.15


class CharEncoder(nn.Module):
    """Token ids (B, T) -> logits over the characters (B, T, symbols).

    ``config.vocab_size`` is ``symbols + 1``: the last id is ``[MASK]``, an input-only token.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.mask_id = config.vocab_size - 1
        self.body = TinyEncoder(config)
        # Sinusoidal initial positions (still learned): with the body's 0.02-scale random positions
        # under N(0, 1) token embeddings, a masked character is at first guessed from a bag of
        # characters, and training stalls near the unigram perplexity for hundreds of steps.
        with torch.no_grad():
            self.body.pos.copy_(_sinusoidal(config.max_len, config.dim))
        self.head = nn.Linear(config.dim, config.vocab_size - 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(tokens))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs used for tracing and export: 2 sequences of 32 character ids."""
        return (torch.randint(0, self.mask_id, (2, 32)),)


def _sinusoidal(length: int, dim: int) -> torch.Tensor:
    """The transformer's sine/cosine position table, ``(length, dim)``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return table


def mask_tokens(ids: torch.Tensor, mask_id: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``MASK_FRACTION`` of ``ids`` (B, T) by ``mask_id``; returns (inputs, bool positions)."""
    where = torch.rand(ids.shape, generator=gen) < MASK_FRACTION
    return ids.masked_fill(where, mask_id), where


@torch.no_grad()
def masked_perplexity(model: nn.Module, ids: torch.Tensor, mask_id: int, seq_len: int = 128, batch: int = 32,
                      seed: int = 1234) -> float:
    """exp(mean cross-entropy) at the masked positions of ``ids`` in windows of ``seq_len``.

    The masks are a pure function of ``seed``, so two models are compared on the same positions.
    """
    was_training = model.training
    model.eval()
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"text too short for masked perplexity: {ids.numel()} tokens, need >= {seq_len}")
    windows = ids[: n * seq_len].view(n, seq_len)
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        target = windows[i : i + batch]
        inputs, where = mask_tokens(target, mask_id, gen)
        logits = model(inputs)
        total += F.cross_entropy(logits[where], target[where], reduction="sum").item()
        count += int(where.sum())
    model.train(was_training)
    return math.exp(total / count)


class _MaskedLMTask:
    """Masked character modelling on the task's corpus (see :func:`masked_lm_task`)."""

    def __init__(self, config, model: CharEncoder, vocab: CharVocab):
        from ..tasks import LMTask

        self.text = LMTask(config, vocab)  # windows, splits and the seeded per-step batches
        self.config, self.mask_id = config, model.mask_id

    def batch(self, step: int, rank: int = 0, world: int = 1):
        from ..tasks import _generator

        x, _ = self.text.batch(step, rank, world)  # (B, T) character ids
        inputs, where = mask_tokens(x, self.mask_id, _generator(self.config.seed + 1, step))
        return inputs, x, where

    def inputs(self, batch) -> tuple:
        return batch[:1]

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        inputs, target, where = batch
        return F.cross_entropy(model(inputs)[where], target[where])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        ids = self.text.valid_ids[: self.config.eval_tokens] if self.config.eval_tokens else self.text.valid_ids
        return {"masked_perplexity": masked_perplexity(model, ids, self.mask_id, self.config.seq_len,
                                                       self.config.batch_size)}


def masked_lm_task(config, spec, teacher):
    """The task for ``name: compressor.models.char_encoder:masked_lm_task``: batches of masked text
    ``(inputs, targets, positions)`` (a pure function of seed and step), the cross-entropy at the
    masked positions, and the masked perplexity on the validation split."""
    from ..errors import CompressorError

    model = spec.model
    if not isinstance(model, CharEncoder) or getattr(spec, "vocab", None) is None:
        raise CompressorError("the masked_lm_task needs the built-in char-encoder (a CharEncoder with its vocabulary)")
    return _MaskedLMTask(config, model, spec.vocab)


def train(out: Path = CHECKPOINT, steps: int = 2000, batch: int = 32, seq_len: int = 128, lr: float = 1e-3,
          seed: int = 0, log_every: int = 100) -> dict:
    """Train the built-in encoder from scratch on the pydoc corpus and save it with safetensors.

    Deterministic for a given seed and torch build. Returns the metadata written with the weights.
    """
    from ..training import optimisation_steps  # the toolkit's one optimisation step (not at import: tasks import models)

    torch.manual_seed(seed)
    text = pydoc_text()
    vocab = CharVocab.from_text(text)
    splits = split_text(text)
    train_ids, valid_ids = vocab.encode(splits.train), vocab.encode(splits.valid)
    config = EncoderConfig(vocab_size=len(vocab) + 1, max_len=seq_len)
    model = CharEncoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[torch.Tensor] = []

    def loss_at(step: int) -> torch.Tensor:
        starts = torch.randint(0, train_ids.numel() - seq_len, (batch,), generator=gen)
        target = train_ids[starts[:, None] + torch.arange(seq_len)]  # (B, T)
        inputs, where = mask_tokens(target, model.mask_id, gen)
        losses[:] = [F.cross_entropy(model(inputs)[where], target[where])]
        return losses[0]

    for step, _ in optimisation_steps(list(model.parameters()), opt, sched, range(1, steps + 1), loss_at, clip=1.0):
        loss = losses[0]
        if step % log_every == 0 or step == steps:
            ppl = masked_perplexity(model, valid_ids[:20000], model.mask_id, seq_len)
            print(f"step {step}/{steps} loss {loss.item():.3f} valid masked ppl {ppl:.3f}", flush=True)
    trained = {"steps": steps, "batch": batch, "seq_len": seq_len, "lr": lr, "seed": seed,
               "valid_masked_perplexity": masked_perplexity(model, valid_ids, model.mask_id, seq_len)}
    return save_checkpoint(out, model, config, vocab, trained)


def load_pretrained(path: Path = CHECKPOINT) -> tuple[CharEncoder, CharVocab]:
    """The shipped checkpoint as a model in eval mode, plus its vocabulary."""
    return load_checkpoint(path, CharEncoder, EncoderConfig, "char-encoder")
