"""Small Hugging Face model directories for the tests (random weights, saved with save_pretrained)."""

from __future__ import annotations

import torch


def tiny_bert_with_tokenizer(path, vocab_size=None):
    """A 2-layer BertModel directory with a character WordPiece tokenizer of 90 tokens."""
    import string

    import transformers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase) + \
        ["##" + c for c in string.ascii_lowercase] + list(".,;:!?()[]{}<>=+-*/\"'_#0123456789")
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    assert len(tokenizer) == len(words)
    config = transformers.BertConfig(vocab_size=vocab_size or len(words), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
