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
- ``text``: for Hugging Face models (a model directory loaded with :func:`compressor.load_model`):
  the corpus tokenized with the model directory's own tokenizer, windows of ``seq_len`` tokens; the
  loss and the evaluation follow ``objective`` (causal LM perplexity, masked LM perplexity, or
  hidden-state distillation with the embedding cosine to the dense model): :mod:`compressor.text_task`.
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

__all__ = ["BatchStream", "perplexity", "TaskConfig", "Task", "LMTask", "DistillTask", "build_task", "task_factory", "check_task",
           "CALIBRATION_METHODS", "TRAINING_METHODS", "TEXT_OBJECTIVES", "kl_distill"]

#: the ``text`` task's ``objective`` values (:mod:`compressor.text_task`)
TEXT_OBJECTIVES = ("auto", "causal_lm", "masked_lm", "embedding", "hidden_states")

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
    #: ``lm``, ``text`` (LM objectives): weight of the distillation term next to the cross-entropy (0: labels only)
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
    #: ``text``: what the loss trains and the evaluation reports (:data:`TEXT_OBJECTIVES`; ``auto``: from
    #: the model's class: ``causal_lm``, ``masked_lm``, else ``embedding``)
    objective: str = "auto"

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
        if self.distill_weight and self.name not in ("lm", "text"):
            raise RecipeError(f"{path}.distill_weight", f"only the lm and text tasks mix in distillation; task "
                              f"{self.name!r} (the distill task is pure distillation; a user task gets the teacher "
                              "and this config)")
        for key in ("tokenizer", "eval_corpus"):
            if getattr(self, key) and self.name != "text":
                raise RecipeError(f"{path}.{key}", f"only the text task reads {key}; task {self.name!r}")
        if self.objective not in TEXT_OBJECTIVES:
            raise RecipeError(f"{path}.objective", f"{self.objective!r} is not an objective; use "
                                                   f"{', '.join(TEXT_OBJECTIVES)}")
        if self.objective != "auto" and self.name not in ("text", "auto"):
            raise RecipeError(f"{path}.objective", f"only the text task reads objective; task {self.name!r}")
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


def _hf_directory(spec) -> str | None:
    source = getattr(spec, "source", None) or {}
    return source.get("directory") if source.get("kind") == "hf" else None


def _takes_floats(spec) -> bool:
    return any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (getattr(spec, "example_inputs", None) or ()))


def build_task(config: TaskConfig, spec, teacher: nn.Module | None, needs: tuple[str, ...] = ("batch",),
               where: str = "task") -> Task:
    """Instantiate the task a pass asks for. A user task must have the methods in ``needs`` (the
    pipeline names what each of the recipe's uses calls); ``where`` is its recipe path."""
    from .text_task import TextTask  # the text task builds on this module

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
