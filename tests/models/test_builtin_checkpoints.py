"""The built-in checkpoints' save/load helpers (compressor.models.checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.corpus import CharVocab
from compressor.models.checkpoint import load_checkpoint, save_checkpoint
from compressor.models.lstm_lm import LSTMConfig, LSTMLanguageModel


def test_round_trip_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    vocab = CharVocab.from_text("hello, world")
    model = LSTMLanguageModel(LSTMConfig(vocab_size=len(vocab.chars), embedding=8, hidden=16, layers=2)).eval()
    out = tmp_path / "m.safetensors"
    meta = save_checkpoint(out, model, model.config, vocab, {"steps": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary file left
    loaded, vocab2 = load_checkpoint(out, LSTMLanguageModel, LSTMConfig, "lstm-lm")
    assert vocab2.chars == vocab.chars and json.loads(meta["trained"]) == {"steps": 0} and not loaded.training
    ids = vocab.encode("hello").unsqueeze(0)
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_missing_checkpoint_names_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/train_builtin.py lstm-lm"):
        load_checkpoint(tmp_path / "none.safetensors", LSTMLanguageModel, LSTMConfig, "lstm-lm")
