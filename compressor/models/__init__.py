"""Built-in models by name. ``compress --model lstm-lm`` (the default) uses these."""

from __future__ import annotations

import json
from collections.abc import Callable

__all__ = ["BUILTIN_MODELS", "build_builtin", "rebuild_builtin"]


def _lstm_lm(config: dict | None = None, pretrained: bool = True):
    from ..corpus import pydoc_text, split_text
    from ..loading import ModelSpec
    from .lstm_lm import LSTMConfig, LSTMLanguageModel, load_pretrained, perplexity

    if pretrained:
        model, vocab = load_pretrained()
    else:
        model, vocab = LSTMLanguageModel(LSTMConfig(**(config or {}))), None
    source = {"kind": "builtin", "name": "lstm-lm", "config": json.loads(json.dumps(model.config.__dict__))}

    def evaluate(m, max_tokens: int | None = None, split: str = "test"):
        # split: "valid" for choices made on the metric (compress sensitivity), so the test split stays unseen
        test_ids = vocab.encode(getattr(split_text(pydoc_text()), split))
        return {"perplexity": perplexity(m, test_ids[: max_tokens + 1] if max_tokens else test_ids)}

    return ModelSpec(
        model=model,
        example_inputs=model.example_inputs(),
        source=source,
        evaluate=evaluate if vocab is not None else None,
        description="lstm-lm: 2-layer character LSTM language model trained on the Python docs",
        vocab=vocab,
    )


def _tiny_encoder(config: dict | None = None, pretrained: bool = True):
    import torch

    from ..loading import ModelSpec
    from .encoder import EncoderConfig, TinyEncoder

    torch.manual_seed(0)  # "pretrained" = the fixed seed-0 initialisation
    model = TinyEncoder(EncoderConfig(**(config or {}))).eval()
    source = {"kind": "builtin", "name": "tiny-encoder", "config": dict(model.config.__dict__)}
    return ModelSpec(model, model.example_inputs(), source,
                     description="tiny-encoder: 2-block transformer-style encoder (seed-0 weights)")


def _char_encoder(config: dict | None = None, pretrained: bool = True):
    from ..corpus import pydoc_text, split_text
    from ..loading import ModelSpec
    from .char_encoder import CharEncoder, load_pretrained, masked_perplexity
    from .encoder import EncoderConfig

    if pretrained:
        model, vocab = load_pretrained()
    else:
        model, vocab = CharEncoder(EncoderConfig(**(config or {}))), None
    source = {"kind": "builtin", "name": "char-encoder", "config": dict(model.config.__dict__)}

    def evaluate(m, max_tokens: int | None = None, split: str = "test"):
        test_ids = vocab.encode(getattr(split_text(pydoc_text()), split))
        test_ids = test_ids[:max_tokens] if max_tokens else test_ids
        return {"masked_perplexity": masked_perplexity(m, test_ids, model.mask_id, model.config.max_len)}

    return ModelSpec(model, model.example_inputs(), source, evaluate=evaluate if vocab is not None else None,
                     description="char-encoder: 2-block transformer encoder trained as a masked character model "
                                 "on the Python docs",
                     vocab=vocab)


#: name -> builder(config: dict | None, pretrained: bool) -> ModelSpec
BUILTIN_MODELS: dict[str, Callable] = {"lstm-lm": _lstm_lm, "tiny-encoder": _tiny_encoder, "char-encoder": _char_encoder}


def build_builtin(name: str):
    """The built-in model ``name`` with its shipped weights, as a ModelSpec."""
    return BUILTIN_MODELS[name](None, True)


def rebuild_builtin(source: dict):
    """The architecture of a built-in model from an artifact's source record (random weights).

    The record is untrusted (it comes from an artifact): the name must be a built-in and the
    config a mapping of the model's own fields, which its config dataclass checks."""
    from ..errors import ModelLoadError

    name, config = source.get("name"), source.get("config")
    if name not in BUILTIN_MODELS:
        raise ModelLoadError(f"{str(name)[:40]!r} is not a built-in model ({', '.join(BUILTIN_MODELS)})")
    if config is not None and not isinstance(config, dict):
        raise ModelLoadError(f"the config of built-in model {name} must be a mapping")
    return BUILTIN_MODELS[name](config, False).model
