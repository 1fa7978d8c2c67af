"""Tasks: the data and the loss that fine-tuning passes train with.

- ``lm``: language modelling on a text corpus (``pydoc``: the Python docs, offline; ``shakespeare``:
  the benchmark corpus, downloaded once; or a text file path), contiguous 90/5/5 splits,
  cross-entropy loss, perplexity on the validation split. The model maps token ids (B, T) to
  logits (B, T, V); the built-in model brings its vocabulary, other models get the corpus's
  character vocabulary and must output that many logits. With ``distill_weight`` w > 0 the loss
  is ``(1 - w) * cross-entropy + w * T^2 * KL(teacher || student)`` at temperature T
  (knowledge distillation from the dense teacher alongside the labels, Hinton et al. 2015).
- ``distill``: match the dense teacher (the model as it was before any pass, unless the caller
  of :meth:`compressor.Pipeline.run` names another) on unlabeled inputs, with MSE or KL (at
  ``temperature``) on the outputs; the default when there are no labels. Inputs come
  from the corpus when the model has a vocabulary, otherwise random tensors shaped like the
  example inputs.
- ``text``: for Hugging Face encoders (a model directory loaded with :func:`compressor.load_model`):
  the corpus tokenized with the model directory's own tokenizer (or ``tokenizer: DIR``), windows of
  ``seq_len`` tokens (special tokens included) with ``input_ids`` and ``attention_mask`` from the
  first 90% of the corpus; the loss is the MSE of the last hidden states to the dense teacher's;
  the evaluation is the cosine of mean-pooled (attention-masked) embeddings to the teacher's on
  held-out sentences (the last 10% of ``eval_corpus``, by default the same corpus), mean and minimum.
- ``module:function`` (a module in the working directory or an installed package) or
  ``path/to/file.py:function``: a user task. ``function(config, spec, teacher)`` returns an object
  with the methods of :class:`Task` that its uses call (:data:`CALIBRATION_METHODS` for a pass's
  ``calibration``, :data:`TRAINING_METHODS` for ``train.task``). The recipe loader imports it and
  checks the signature (:func:`task_factory`); the pipeline builds it and checks the methods
  (:func:`check_task`) before any pass changes a layer.

Batches are a pure function of (seed, step): a resumed run sees exactly the batches it would
have seen, and under torchrun every rank takes its own slice of the same global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .corpus import CharVocab, corpus_text, split_text
from .errors import CompressorError, RecipeError

__all__ = ["BatchStream", "perplexity", "TaskConfig", "Task", "LMTask", "DistillTask", "TextTask", "build_task", "task_factory", "check_task",
           "CALIBRATION_METHODS", "TRAINING_METHODS", "kl_distill", "mean_pool", "held_out_sentences"]

#: what each use of a task calls: a pass's ``calibration`` records ``inputs(batch(step))`` ...
CALIBRATION_METHODS = ("batch", "inputs")
#: ... and a training loop (``train.task``) minimises ``loss`` and logs ``evaluate`` (when ``eval_every`` > 0)
TRAINING_METHODS = ("batch", "loss", "evaluate")
#: the protocol's methods as a user writes them (the error names the missing one this way)
_SIGNATURES = {"batch": "batch(step, rank=0, world=1)", "inputs": "inputs(batch)", "loss": "loss(model, batch)",
               "evaluate": "evaluate(model)"}


class BatchStream(IntEnum):
    """The first ``task.batch(step)`` step of each use of a task's batches: training passes count
    from 0, calibration and a task's own evaluation far beyond any training run, so the three never
    draw the same batch (a calibration batch a fine-tuning pass had trained on would flatter it)."""

    TRAINING = 0
    CALIBRATION = 1_000_000
    EVALUATION = 10_000_000


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seq_len: int = 128, batch: int = 32) -> float:
    """Per-token perplexity of ``model`` on ``ids`` in non-overlapping windows of ``seq_len``."""
    was_training = model.training
    model.eval()
    n = (ids.numel() - 1) // seq_len
    if n == 0:
        raise ValueError(f"text too short for perplexity: {ids.numel()} tokens, need > {seq_len}")
    inputs = ids[: n * seq_len].view(n, seq_len)
    targets = ids[1 : n * seq_len + 1].view(n, seq_len)
    total = 0.0
    for i in range(0, n, batch):
        logits = model(inputs[i : i + batch])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[i : i + batch].reshape(-1), reduction="sum").item()
    model.train(was_training)
    return math.exp(total / (n * seq_len))


@dataclass(frozen=True)
class TaskConfig:
    """``name``: ``lm`` | ``distill`` | ``text`` | ``auto`` (the calibration default: ``text`` for Hugging
    Face models, ``distill``'s inputs for models of floating-point inputs, ``lm`` otherwise) | ``module:function``. ``corpus``:
    ``pydoc`` | ``shakespeare`` | a text file. ``batch_size`` is the global batch (split across torchrun
    ranks). ``tokenizer``, ``eval_corpus`` and ``eval_sentences`` are the ``text`` task's."""

    name: str = "lm"
    corpus: str = "pydoc"
    seq_len: int = 128
    batch_size: int = 32
    eval_tokens: int = 32768
    loss: Literal["kl", "mse"] = "kl"
    #: ``lm``: weight of the distillation term next to the cross-entropy (0: labels only)
    distill_weight: float = 0.0
    #: softmax temperature of every KL distillation term
    temperature: float = 1.0
    seed: int = 0
    #: ``distill``: the dimension of the example inputs that holds the batch; null: 1 when every
    #: layer with a ``batch_first`` setting (LSTM, GRU, transformer layers) is sequence-first, else 0
    batch_dim: int | None = None
    #: ``text``: a directory with the tokenizer files (default: the Hugging Face model's own directory)
    tokenizer: str = ""
    #: ``text``: the corpus whose held-out part is evaluated (default: ``corpus``)
    eval_corpus: str = ""
    #: ``text``: held-out sentences the embedding cosine is measured on
    eval_sentences: int = 256

    def validate(self, path: str) -> None:
        if self.name not in ("lm", "distill", "text", "auto") and ":" not in self.name:
            raise RecipeError(f"{path}.name", f"{self.name!r} is not a task; use lm, distill, text, auto or "
                                              "'module:function'")
        if self.batch_dim is not None and not 0 <= self.batch_dim <= 8:
            raise RecipeError(f"{path}.batch_dim", f"{self.batch_dim} is invalid; a dimension in [0, 8] or null")
        for key, low in (("seq_len", 2), ("batch_size", 1), ("eval_tokens", 0), ("eval_sentences", 1)):
            if getattr(self, key) < low:
                raise RecipeError(f"{path}.{key}", f"{getattr(self, key)} is invalid; must be >= {low}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise RecipeError(f"{path}.distill_weight", f"{self.distill_weight} is invalid; must be in [0, 1]")
        if self.distill_weight and self.name != "lm":
            raise RecipeError(f"{path}.distill_weight", f"only the lm task mixes in distillation; task {self.name!r} "
                              "(the distill task is pure distillation; a user task gets the teacher and this config)")
        for key in ("tokenizer", "eval_corpus"):
            if getattr(self, key) and self.name != "text":
                raise RecipeError(f"{path}.{key}", f"only the text task reads {key}; task {self.name!r}")
        if not 0.0 < self.temperature <= 100.0:
            raise RecipeError(f"{path}.temperature", f"{self.temperature} is invalid; must be in (0, 100]")
        if ":" in self.name:  # a user task: importable, with the factory's signature, before any model loads
            task_factory(self.name, f"{path}.name")


def task_factory(name: str, where: str = "task.name"):
    """The factory a user task ``module:function`` (or ``file.py:function``) names, imported (the
    working directory first, for that import only) and checked to accept ``(config, spec, teacher)``.

    This runs the module the user named in their own recipe (artifacts never name tasks).
    A bad reference is a :class:`RecipeError` at ``where`` naming it."""
    import inspect

    from .loading import import_callable

    fn, _ = import_callable(name, lambda reason: RecipeError(where, f"task {name!r}: {reason}"))
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: the call will tell
        return fn
    try:
        signature.bind(None, None, None)
    except TypeError:
        attr = name.rpartition(":")[2]
        raise RecipeError(where, f"task {name!r}: {attr}{signature} cannot be called as {attr}(config, spec, teacher); "
                                 "a task factory takes the task config, the loaded model spec and the dense teacher") from None
    return fn


def check_task(task, needs: tuple[str, ...], name: str, where: str = "task.name") -> None:
    """Fail in one line, naming the first missing method, unless ``task`` has every method in ``needs``."""
    missing = [m for m in needs if not callable(getattr(task, m, None))]
    if missing:
        use = "a training loop" if "loss" in needs or "evaluate" in needs else "calibration"
        others = f" (nor {', '.join(missing[1:])})" if missing[1:] else ""
        calls = ", ".join(_SIGNATURES[m] for m in needs)
        raise CompressorError(f"{where}: task {name!r} returned {type(task).__name__}, which has no "
                              f"{_SIGNATURES[missing[0]]} method{others}; {use} calls {calls}")


class Task:
    """Interface: deterministic batches, a mean loss, and an evaluation."""

    def batch(self, step: int, rank: int = 0, world: int = 1):
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def inputs(self, batch) -> tuple:
        """The model inputs of a batch (for calibration data)."""
        return batch[:1] if isinstance(batch, tuple) else (batch,)


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _rank_slice(batch_size: int, rank: int, world: int) -> slice:
    if batch_size % world:
        raise CompressorError(f"task batch_size {batch_size} is not divisible by the {world} torchrun processes")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def _rank_span(batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """(start, length) of this rank's share of the batch, for ``Tensor.narrow``."""
    share = _rank_slice(batch_size, rank, world)
    return share.start, share.stop - share.start


def kl_distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` of the softened distributions over the last dimension,
    averaged over the other positions (the T^2 keeps gradients comparable across temperatures)."""
    s = F.log_softmax(student.reshape(-1, student.shape[-1]).float() / temperature, -1)
    t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]).float() / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _frozen(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class LMTask(Task):
    """Next-token prediction on a character corpus, optionally distilled from a teacher."""

    def __init__(self, config: TaskConfig, vocab: CharVocab | None = None, teacher: nn.Module | None = None):
        self.config = config
        if config.distill_weight and teacher is None:
            raise CompressorError("task.distill_weight needs the dense teacher model")
        self.teacher = _frozen(teacher) if config.distill_weight else None
        text = corpus_text(config.corpus)
        splits = split_text(text)
        self.vocab = vocab or CharVocab.from_text(splits.train)
        self.train_ids = self.vocab.encode(splits.train)
        self.valid_ids = self.vocab.encode(splits.valid)
        self.test_ids = self.vocab.encode(splits.test)
        if self.train_ids.numel() <= config.seq_len + 1 or self.valid_ids.numel() <= config.seq_len + 1:
            raise CompressorError(
                f"corpus {config.corpus!r} is too short for seq_len {config.seq_len}: "
                f"{len(text)} characters ({self.train_ids.numel()} train, {self.valid_ids.numel()} valid)"
            )

    def batch(self, step, rank=0, world=1):
        c = self.config
        starts = torch.randint(0, self.train_ids.numel() - c.seq_len - 1, (c.batch_size,), generator=_generator(c.seed, step))
        starts = starts[_rank_slice(c.batch_size, rank, world)]
        window = self.train_ids[starts[:, None] + torch.arange(c.seq_len + 1)]  # (B, T+1)
        return window[:, :-1], window[:, 1:]

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        if logits.shape[-1] != len(self.vocab):
            raise CompressorError(
                f"the lm task needs logits over the {len(self.vocab)} corpus symbols; the model outputs {logits.shape[-1]}"
            )
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        w = self.config.distill_weight
        if not w:
            return ce
        with torch.no_grad():
            target = self.teacher(x)
        return (1 - w) * ce + w * kl_distill(logits, target, self.config.temperature)

    def perplexity(self, model, ids: torch.Tensor) -> float:
        c = self.config
        return perplexity(model, ids[: c.eval_tokens + 1] if c.eval_tokens else ids, c.seq_len, c.batch_size)

    def evaluate(self, model):
        return {"perplexity": self.perplexity(model, self.valid_ids)}


class DistillTask(Task):
    """Match the dense teacher's outputs (KL on the last dimension, or MSE)."""

    def __init__(self, config: TaskConfig, teacher: nn.Module | None, example_inputs: tuple | None,
                 vocab: CharVocab | None, batch_dim: int = 0):
        self.config = config
        self.teacher = _frozen(teacher) if teacher is not None else None  # calibration needs batches only
        self.lm = LMTask(config, vocab) if vocab is not None else None
        if self.lm is None and example_inputs is None:
            raise CompressorError("the distill task needs example inputs (--input) or a model with a vocabulary")
        self.example = example_inputs
        self.batch_dim = batch_dim

    def batch(self, step, rank=0, world=1):
        if self.lm is not None:
            return (self.lm.batch(step, rank, world)[0],)
        gen = _generator(self.config.seed, step)
        out = []
        for ex in self.example:
            dim = self.batch_dim if ex.dim() > self.batch_dim else 0
            shape = list(ex.shape) or [1]
            shape[dim] = self.config.batch_size  # a sequence-first input keeps its sequence length
            t = torch.randn(shape, generator=gen).to(ex.dtype) if ex.is_floating_point() else \
                torch.randint(0, int(ex.max()) + 1, shape, generator=gen, dtype=ex.dtype)
            out.append(t.narrow(dim, *_rank_span(self.config.batch_size, rank, world)))
        return tuple(out)

    def inputs(self, batch):
        return batch

    def loss(self, model, batch):
        student = model(*batch)
        with torch.no_grad():
            teacher = self.teacher(*batch)
        if self.config.loss == "mse":
            return F.mse_loss(student, teacher)
        return kl_distill(student, teacher, self.config.temperature)

    @torch.no_grad()
    def evaluate(self, model):
        was = model.training
        model.eval()
        losses = [float(self.loss(model, self.batch(BatchStream.EVALUATION + i))) for i in range(4)]
        model.train(was)
        return {"distill_loss": sum(losses) / len(losses)}


def _batch_dim(config: TaskConfig, spec) -> int:
    """The example inputs' batch dimension: the config's, else 1 for a model whose every layer with a
    ``batch_first`` setting is sequence-first (a sequence-first LSTM got ``batch_size`` as its sequence
    length when dimension 0 was taken for the batch), else 0."""
    if config.batch_dim is not None:
        return config.batch_dim
    flags = [m.batch_first for m in getattr(spec, "model", nn.Module()).modules() if hasattr(m, "batch_first")]
    return 1 if flags and not any(flags) else 0


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the mean of ``hidden`` (B, T, H) over the positions where
    ``attention_mask`` (B, T) is 1 (sentence-transformers' mean pooling)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def held_out_sentences(text: str, count: int, min_words: int = 4) -> list[str]:
    """``count`` sentences spread evenly over ``text`` (paragraphs split at blank lines, whitespace
    collapsed, split after . ! ?), each of at least ``min_words`` words; fewer if the text has fewer."""
    import re

    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())):
            if len(sentence.split()) >= min_words and any(ch.isalpha() for ch in sentence):
                sentences.append(sentence)
    if len(sentences) <= count:
        return sentences
    return [sentences[i * len(sentences) // count] for i in range(count)]


def _hf_directory(spec) -> str | None:
    source = getattr(spec, "source", None) or {}
    return source.get("directory") if source.get("kind") == "hf" else None


#: files one of which a Hugging Face tokenizer directory holds
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")


def load_tokenizer(config: TaskConfig, spec):
    """The text task's tokenizer: ``config.tokenizer`` or the Hugging Face model's own directory,
    checked against the model's embedding (a token id the embedding has no row for is refused)."""
    directory = config.tokenizer or _hf_directory(spec)
    if not directory:
        raise CompressorError("the text task needs a tokenizer: load a Hugging Face model directory as the model, "
                              "or name a directory with tokenizer files as task.tokenizer")
    try:
        import transformers
    except ImportError:
        raise CompressorError("the text task needs transformers; pip install 'compressor[hf]'") from None
    from pathlib import Path

    # transformers 5 builds a tokenizer of special tokens only from a directory without tokenizer files
    if Path(directory).is_dir() and not any((Path(directory) / name).is_file() for name in _TOKENIZER_FILES):
        raise CompressorError(f"the text task found no usable tokenizer in {directory}: none of "
                              f"{', '.join(_TOKENIZER_FILES)}; name a directory with one as task.tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompressorError(f"the text task found no usable tokenizer in {directory} (tokenizer.json, or vocab.txt and "
                              f"tokenizer_config.json): {type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None
    if isinstance(tokenizer, bool) or not callable(tokenizer) or len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise CompressorError(f"the text task found no usable tokenizer in {directory} (no vocabulary beyond the "
                              "special tokens)")
    embed = getattr(spec.model, "get_input_embeddings", lambda: None)()
    rows = getattr(embed, "num_embeddings", None)
    if rows is None:
        raise CompressorError("the text task needs a model with a token embedding (a Hugging Face model's "
                              "get_input_embeddings()); this model has none")
    if len(tokenizer) > rows:
        raise CompressorError(f"the tokenizer of {directory} has {len(tokenizer)} tokens but the model's embedding has "
                              f"{rows} rows: use the model's own tokenizer (a vocabulary of at most {rows} tokens)")
    return tokenizer


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (BERT: ``[CLS]`` and ``[SEP]``)."""
    body = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello world")["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return list(full[:i]), list(full[i + len(body):])
    return [], []


#: token ids of recently tokenized training texts: every pass of a run, every run of a benchmark and
#: every point of a sensitivity sweep builds its own text task on the same corpus (tokenizing a
#: corpus costs about a second, far more than a calibration batch); a few entries, newest kept
_TOKENIZED: dict[tuple, torch.Tensor] = {}
_TOKENIZED_ENTRIES = 4


def _tokenized(tok, text: str) -> torch.Tensor:
    """The ids of ``text``'s paragraphs tokenized by ``tok`` (no special tokens), concatenated; cached
    by the tokenizer's class, source, vocabulary size and the text itself."""
    key = (type(tok).__name__, str(getattr(tok, "name_or_path", "")), len(tok), len(text), hash(text))
    if key not in _TOKENIZED:
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        ids = tok(paragraphs, add_special_tokens=False, verbose=False)["input_ids"] if paragraphs else []
        while len(_TOKENIZED) >= _TOKENIZED_ENTRIES:
            _TOKENIZED.pop(next(iter(_TOKENIZED)))
        _TOKENIZED[key] = torch.tensor([i for row in ids for i in row], dtype=torch.long)
    return _TOKENIZED[key]


class TextTask(Task):
    """Tokenized text for Hugging Face encoders: calibration/training windows and an embedding-cosine
    evaluation against the dense teacher (see the module docstring)."""

    def __init__(self, config: TaskConfig, spec, teacher: nn.Module | None):
        self.config = config
        self.teacher = _frozen(teacher) if teacher is not None else None
        self.tokenizer = tok = load_tokenizer(config, spec)
        limit = getattr(getattr(spec.model, "config", None), "max_position_embeddings", None)
        if limit and config.seq_len > limit:
            raise CompressorError(f"task seq_len {config.seq_len} is longer than the model's {limit} positions; "
                                  f"use seq_len <= {limit}")
        self.prefix, self.suffix = _special_tokens(tok)
        self.specials = len(self.prefix) + len(self.suffix)
        if config.seq_len <= self.specials:
            raise CompressorError(f"task seq_len {config.seq_len} leaves no room for text next to the tokenizer's "
                                  f"{self.specials} special tokens; use seq_len > {self.specials}")
        text = corpus_text(config.corpus)
        self.train_ids = _tokenized(tok, split_text(text).train)
        if self.train_ids.numel() <= config.seq_len:
            raise CompressorError(f"corpus {config.corpus!r} is too short for seq_len {config.seq_len}: "
                                  f"{self.train_ids.numel()} tokens in its first 90%")
        held = split_text(text if not config.eval_corpus else corpus_text(config.eval_corpus))
        self.eval_text = held_out_sentences(held.valid + "\n\n" + held.test, config.eval_sentences)
        self._teacher_embeddings: torch.Tensor | None = None

    def batch(self, step, rank=0, world=1):
        """``(input_ids, attention_mask)``, both (B, seq_len): windows of the corpus's first 90% wrapped
        in the tokenizer's special tokens (no padding: the mask is all ones)."""
        c = self.config
        body = c.seq_len - self.specials
        starts = torch.randint(0, self.train_ids.numel() - body, (c.batch_size,), generator=_generator(c.seed, step))
        starts = starts[_rank_slice(c.batch_size, rank, world)]
        window = self.train_ids[starts[:, None] + torch.arange(body)]  # (B, body)
        n = window.shape[0]
        input_ids = torch.cat([torch.tensor(self.prefix, dtype=torch.long).expand(n, -1), window,
                               torch.tensor(self.suffix, dtype=torch.long).expand(n, -1)], 1)
        return input_ids, torch.ones_like(input_ids)

    def inputs(self, batch):
        """Keyword inputs of a Hugging Face model: ``{"input_ids", "attention_mask"}``."""
        return {"input_ids": batch[0], "attention_mask": batch[1]}

    @staticmethod
    def hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's last hidden states (B, T, H) (``last_hidden_state``, else the last of ``hidden_states``)."""
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            states = getattr(out, "hidden_states", None)
            if not states:
                raise CompressorError("the text task needs a Hugging Face model that returns last_hidden_state "
                                      "or hidden_states; this one returns neither")
            hidden = states[-1]
        return hidden

    def loss(self, model, batch):
        if self.teacher is None:
            raise CompressorError("the text task's loss needs the dense teacher model")
        input_ids, mask = batch
        student = self.hidden(model, input_ids, mask)
        with torch.no_grad():
            target = self.hidden(self.teacher, input_ids, mask)
        m = mask.to(student.dtype).unsqueeze(-1)
        return ((student - target).pow(2) * m).sum() / (m.sum() * student.shape[-1]).clamp_min(1.0)

    @torch.no_grad()
    def embed(self, model: nn.Module, sentences: list[str] | None = None, batch_size: int = 32) -> torch.Tensor:
        """Mean-pooled embeddings (N, H) of ``sentences`` (default: the held-out ones), ``seq_len`` tokens at most."""
        sentences = self.eval_text if sentences is None else sentences
        was = model.training
        model.eval()
        parts = []
        for i in range(0, len(sentences), batch_size):
            enc = self.tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                                 max_length=self.config.seq_len, return_tensors="pt")
            parts.append(mean_pool(self.hidden(model, enc["input_ids"], enc["attention_mask"]).float(),
                                   enc["attention_mask"]))
        model.train(was)
        return torch.cat(parts)

    def evaluate(self, model):
        """Cosine of the model's sentence embeddings to the dense teacher's on the held-out sentences."""
        if self.teacher is None:
            raise CompressorError("the text task's evaluation needs the dense teacher model")
        if not self.eval_text:
            raise CompressorError(f"the held-out text of {self.config.eval_corpus or self.config.corpus!r} has no "
                                  "sentence of 4 words or more to evaluate")
        if self._teacher_embeddings is None:
            self._teacher_embeddings = self.embed(self.teacher)
        cos = F.cosine_similarity(self.embed(model), self._teacher_embeddings, dim=-1)
        return {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min())}


def _takes_floats(spec) -> bool:
    return any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (getattr(spec, "example_inputs", None) or ()))


def build_task(config: TaskConfig, spec, teacher: nn.Module | None, needs: tuple[str, ...] = ("batch",),
               where: str = "task") -> Task:
    """Instantiate the task a pass asks for. A user task must have the methods in ``needs`` (the
    pipeline names what each of the recipe's uses calls); ``where`` is its recipe path."""
    vocab = getattr(spec, "vocab", None)
    if config.name == "auto":
        # the calibration default: token ids cannot feed a model whose inputs are floating point
        # (nm_convert's default built integer inputs for an MLP and failed on a dtype mismatch), so
        # such a model gets the distill task's inputs, random tensors shaped like its example inputs
        if vocab is None and _takes_floats(spec):
            return DistillTask(config, teacher, spec.example_inputs, None, _batch_dim(config, spec))
        if vocab is None and _hf_directory(spec):  # its own tokenizer, not the corpus's characters
            return TextTask(config, spec, teacher)
        return LMTask(config, vocab, teacher)
    if config.name == "lm":
        return LMTask(config, vocab, teacher)
    if config.name == "text":
        return TextTask(config, spec, teacher)
    if config.name == "distill":
        if teacher is None:
            raise CompressorError("the distill task needs the dense teacher model")
        return DistillTask(config, teacher, spec.example_inputs, vocab, _batch_dim(config, spec))
    fn = task_factory(config.name, f"{where}.name")
    attr = config.name.rpartition(":")[2]
    try:
        task = fn(config, spec, teacher)
    except TypeError as exc:  # inside the factory: the signature itself was checked
        raise CompressorError(f"task {config.name!r}: calling {attr}(config, spec, teacher) failed: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    check_task(task, needs, config.name, f"{where}.name")
    return task
