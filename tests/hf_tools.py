"""Small Hugging Face model directories for the tests (random weights, saved with save_pretrained)."""

from __future__ import annotations

import torch


def char_wordpiece_tokenizer():
    """A character WordPiece tokenizer of 90 tokens ([PAD] [UNK] [CLS] [SEP] [MASK], letters, ##letters, punctuation)."""
    import string

    import transformers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase) + \
        ["##" + c for c in string.ascii_lowercase] + list(".,;:!?()[]{}<>=+-*/\"'_#0123456789")
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    assert len(tokenizer) == len(words)
    return tokenizer


def tiny_bert_with_tokenizer(path, vocab_size=None):
    """A 2-layer BertModel directory with a character WordPiece tokenizer of 90 tokens."""
    return tiny_hf_with_tokenizer(path, "BertModel", vocab_size)


def tiny_hf_with_tokenizer(path, architecture="BertModel", vocab_size=None):
    """A 2-layer ``BertModel``, ``BertForMaskedLM`` or ``GPT2LMHeadModel`` directory (random weights,
    64 positions) with the character tokenizer of :func:`char_wordpiece_tokenizer`."""
    import transformers

    tokenizer = char_wordpiece_tokenizer()
    vocab = vocab_size or len(tokenizer)
    if architecture == "GPT2LMHeadModel":
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    else:
        config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    getattr(transformers, architecture)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
