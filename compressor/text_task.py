"""The ``text`` task: a Hugging Face model's own tokenizer on a text corpus.

The corpus (``pydoc``, ``shakespeare`` or a text file) is tokenized with the model directory's own
tokenizer (or ``tokenizer: DIR``, checked against the model's embedding); calibration and training
take windows of ``seq_len`` tokens (the tokenizer's special tokens included, no padding; whole
sentences for ``embedding``) from its first 90% as ``input_ids`` and ``attention_mask``. What the
loss trains and what the evaluation reports follow ``objective`` (``auto``: from the model's class):

- ``causal_lm`` (a ``...ForCausalLM`` or ``...LMHeadModel``: GPT-2 and other decoders): next-token
  cross-entropy; evaluation: ``perplexity`` on the held-out text (the last 10% of ``eval_corpus``,
  default ``corpus``, at most ``eval_tokens`` tokens) in windows of ``seq_len``, every text token
  after a window's first predicted from the ones before it.
- ``masked_lm`` (a ``...ForMaskedLM``): 15% of each window's text positions (never a special token;
  at least one per window) replaced by the tokenizer's mask token, cross-entropy there (calibration
  records the masked windows: what such a model predicts from); evaluation: ``masked_perplexity``
  on held-out windows whose masks are a pure function of ``seed``.
- ``embedding`` (any model; the default without an LM head, such as sentence encoders): trains what
  the evaluation measures, one minus the cosine of the mean-pooled embedding to the dense teacher's,
  plus each block's output error to the teacher's, on inputs shaped like the sentences users embed:
  every row is one or two whole sentences of the corpus (:func:`split_sentences`, as the held-out
  ones), and the rows of a batch are drawn among the runs of one length, which the batch draws
  from the corpus's own mix of lengths (short inputs are where a pruned encoder strays most; one
  length per batch keeps the rows free of padding, so calibration records text only).
- ``hidden_states`` (any model): MSE of the last hidden states to the dense teacher's, on windows
  of ``seq_len`` tokens.

The evaluation of the last two is the cosine of mean-pooled (attention-masked) embeddings to the
teacher's on ``eval_sentences`` held-out sentences, ``embedding_cosine_mean`` and
``embedding_cosine_min``.

With ``distill_weight`` w > 0 the two LM objectives train on ``(1 - w) * cross-entropy + w * T^2 *
KL(teacher || student)`` of the LM head's logits at the positions the cross-entropy scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .corpus import corpus_text, split_text
from .errors import CompressorError
from .tasks import TEXT_OBJECTIVES, Task, TaskConfig, _frozen, _generator, _hf_directory, _rank_slice, kl_distill

__all__ = ["TextTask", "TEXT_OBJECTIVES", "EMBEDDING_OBJECTIVES", "MASK_FRACTION", "EMBEDDING_MIN_TOKENS",
           "EMBEDDING_SENTENCES", "text_objective", "load_tokenizer", "mean_pool", "held_out_sentences",
           "split_sentences", "sentence_runs"]
#: ``masked_lm``: the share of a window's text positions replaced by the mask token
MASK_FRACTION = 0.15
#: ``masked_lm``: the label of a position the loss does not score (PyTorch's and transformers' convention)
IGNORE = -100
#: ``embedding``: a row is 1 to this many consecutive whole sentences ...
EMBEDDING_SENTENCES = 2
#: ... of at least this many tokens (the special ones included)
EMBEDDING_MIN_TOKENS = 6
#: the objectives evaluated by the cosine of sentence embeddings to the dense model's
EMBEDDING_OBJECTIVES = ("hidden_states", "embedding")


def text_objective(model: nn.Module, requested: str) -> str:
    """The objective ``requested`` (``auto``: ``causal_lm`` for a ``...ForCausalLM``/``...LMHeadModel``,
    ``masked_lm`` for a ``...ForMaskedLM``, else ``embedding``); an LM objective the model has no
    head for is refused in one line."""
    name = type(model).__name__
    head = "causal_lm" if name.endswith(("ForCausalLM", "LMHeadModel")) else "masked_lm" if name.endswith("ForMaskedLM") \
        else None
    if requested == "auto":
        return head or "embedding"
    if requested in ("causal_lm", "masked_lm") and requested != head:
        needs = "a ...ForCausalLM or ...LMHeadModel" if requested == "causal_lm" else "a ...ForMaskedLM"
        raise CompressorError(f"task objective {requested!r} needs {needs} model (its LM head's logits); {name} is "
                              f"not one: use objective: {head or 'embedding'}")
    return requested


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: the mean of ``hidden`` (B, T, H) over the positions where
    ``attention_mask`` (B, T) is 1 (sentence-transformers' mean pooling)."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: paragraphs split at blank lines, whitespace collapsed, then split
    after ``.``, ``!`` or ``?`` followed by whitespace (so ``os.path`` stays whole)."""
    import re

    return [sentence for paragraph in re.split(r"\n\s*\n", text)
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph.split())) if sentence]


def held_out_sentences(text: str, count: int, min_words: int = 4) -> list[str]:
    """``count`` sentences of :func:`split_sentences` spread evenly over ``text``, each of at least
    ``min_words`` words and with a letter; fewer if the text has fewer."""
    sentences = [s for s in split_sentences(text) if len(s.split()) >= min_words and any(ch.isalpha() for ch in s)]
    if len(sentences) <= count:
        return sentences
    return [sentences[i * len(sentences) // count] for i in range(count)]


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


def sentence_runs(lengths: torch.Tensor, shortest: int, longest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(starts, lengths)`` of every run of 1 to :data:`EMBEDDING_SENTENCES` consecutive sentences of
    ``shortest`` to ``longest`` tokens, in the concatenation of sentences of token counts ``lengths``,
    sorted by length; windows of ``longest`` tokens from every position when no run fits."""
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    runs = [(bounds[:-k], bounds[k:] - bounds[:-k]) for k in range(1, EMBEDDING_SENTENCES + 1) if bounds.numel() > k]
    starts = spans = torch.zeros(0, dtype=torch.long)
    if runs:
        starts, spans = (torch.cat(parts) for parts in zip(*runs))
        keep = (spans >= shortest) & (spans <= longest)
        starts, spans = starts[keep], spans[keep]
    if not starts.numel():
        total = int(bounds[-1])
        starts = torch.arange(max(total - longest + 1, 1))
        spans = torch.full_like(starts, min(longest, total))
    order = torch.argsort(spans, stable=True)
    return starts[order], spans[order]


#: token ids of recently tokenized training texts: every pass of a run, every run of a benchmark and
#: every point of a sensitivity sweep builds its own text task on the same corpus (tokenizing a
#: corpus costs about a second, far more than a calibration batch); a few entries, newest kept
_TOKENIZED: dict[tuple, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
_TOKENIZED_ENTRIES = 4


def _tokenized(tok, text: str, sentences: bool = False):
    """The ids of ``text``'s paragraphs tokenized by ``tok`` (no special tokens), concatenated; with
    ``sentences``, of its :func:`split_sentences` instead, and their token counts: ``(ids, lengths)``.
    Cached by the tokenizer's class, source, vocabulary size and the text itself."""
    key = (type(tok).__name__, str(getattr(tok, "name_or_path", "")), len(tok), len(text), hash(text), sentences)
    if key not in _TOKENIZED:
        pieces = split_sentences(text) if sentences else [p for p in text.split("\n\n") if p.strip()]
        ids = tok(pieces, add_special_tokens=False, verbose=False)["input_ids"] if pieces else []
        while len(_TOKENIZED) >= _TOKENIZED_ENTRIES:
            _TOKENIZED.pop(next(iter(_TOKENIZED)))
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        _TOKENIZED[key] = (flat, torch.tensor([len(row) for row in ids], dtype=torch.long)) if sentences else flat
    return _TOKENIZED[key]


class TextTask(Task):
    """Tokenized text for Hugging Face models: calibration and training windows, and the held-out
    evaluation of the model's ``objective`` (see the module docstring)."""

    def __init__(self, config: TaskConfig, spec, teacher: nn.Module | None):
        self.config = config
        self.teacher = _frozen(teacher) if teacher is not None else None
        self.objective = text_objective(spec.model, config.objective)
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
        self.mask_id = tok.mask_token_id if self.objective == "masked_lm" else None
        if self.objective == "masked_lm" and self.mask_id is None:
            raise CompressorError(f"task objective 'masked_lm' needs a tokenizer with a mask token; {type(tok).__name__} "
                                  "has none")
        if config.distill_weight and self.objective in EMBEDDING_OBJECTIVES:
            raise CompressorError("task distill_weight mixes distillation into an LM objective's cross-entropy; the "
                                  f"{self.objective} objective is distillation already")
        text = corpus_text(config.corpus)
        self.train_ids = _tokenized(tok, split_text(text).train)
        if self.train_ids.numel() <= config.seq_len:
            raise CompressorError(f"corpus {config.corpus!r} is too short for seq_len {config.seq_len}: "
                                  f"{self.train_ids.numel()} tokens in its first 90%")
        held = split_text(text if not config.eval_corpus else corpus_text(config.eval_corpus))
        held_text = held.valid + "\n\n" + held.test
        self.eval_text = held_out_sentences(held_text, config.eval_sentences)
        self.eval_ids = _tokenized(tok, held_text) if self.objective not in EMBEDDING_OBJECTIVES else None
        self.sentence_ids = self.runs = None
        if self.objective == "embedding":
            self.sentence_ids, lengths = _tokenized(tok, split_text(text).train, sentences=True)
            self.runs = sentence_runs(lengths, max(EMBEDDING_MIN_TOKENS - self.specials, 1),
                                      config.seq_len - self.specials)
        self._teacher_embeddings: torch.Tensor | None = None

    def _wrap(self, window: torch.Tensor) -> torch.Tensor:
        """(B, body) text ids -> (B, seq_len) with the tokenizer's special tokens around them."""
        n = window.shape[0]
        return torch.cat([torch.tensor(self.prefix, dtype=torch.long).expand(n, -1), window,
                          torch.tensor(self.suffix, dtype=torch.long).expand(n, -1)], 1)

    def _mask(self, input_ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``masked_lm``: (masked ids, labels): :data:`MASK_FRACTION` of the text positions of every row
        (at least one; never a special token) become the mask token, labelled with the original id."""
        rows, cols = input_ids.shape
        text = torch.zeros(rows, cols, dtype=torch.bool)
        text[:, len(self.prefix):cols - len(self.suffix)] = True
        pick = (torch.rand(rows, cols, generator=gen) < MASK_FRACTION) & text
        one = len(self.prefix) + torch.randint(0, cols - self.specials, (rows,), generator=gen)
        pick[torch.arange(rows), one] = True
        return input_ids.masked_fill(pick, self.mask_id), input_ids.masked_fill(~pick, IGNORE)

    def batch(self, step, rank=0, world=1):
        """``(input_ids, attention_mask)``, both (B, seq_len): windows of the corpus's first 90% wrapped
        in the tokenizer's special tokens (no padding: the mask is all ones); ``masked_lm`` adds the
        labels, ``(masked input_ids, attention_mask, labels)``; ``embedding``: (B, L), every row one or
        two whole sentences, L tokens with the special ones, L the length of a random run."""
        c = self.config
        body = c.seq_len - self.specials
        gen = _generator(c.seed, step)
        if self.objective == "embedding":  # the length of a random run; rows among the runs of that length
            starts, lengths = self.runs
            body = int(lengths[torch.randint(0, lengths.numel(), (), generator=gen)])
            low, high = (int(torch.searchsorted(lengths, body, right=side)) for side in (False, True))
            starts = starts[torch.randint(low, high, (c.batch_size,), generator=gen)]
            source = self.sentence_ids
        else:
            starts = torch.randint(0, self.train_ids.numel() - body, (c.batch_size,), generator=gen)
            source = self.train_ids
        input_ids = self._wrap(source[starts[:, None] + torch.arange(body)])
        if self.objective == "masked_lm":  # masks of the whole global batch, then this rank's share
            masked, labels = self._mask(input_ids, gen)
            share = _rank_slice(c.batch_size, rank, world)
            return masked[share], torch.ones_like(masked[share]), labels[share]
        input_ids = input_ids[_rank_slice(c.batch_size, rank, world)]
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

    @staticmethod
    def logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The LM head's logits (B, T, V)."""
        logits = getattr(model(input_ids=input_ids, attention_mask=attention_mask), "logits", None)
        if logits is None:
            raise CompressorError("the text task's LM objectives need a model whose output has logits")
        return logits

    def _scored(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the positions the cross-entropy scores (P, V), their target ids (P,))."""
        input_ids, mask = batch[0], batch[1]
        logits = self.logits(model, input_ids, mask)
        if self.objective == "masked_lm":
            at = batch[2] != IGNORE
            return logits[at], batch[2][at]
        # causal: position t predicts token t + 1; the targets are the text tokens after the window's first
        first = max(len(self.prefix), 1)
        last = input_ids.shape[1] - len(self.suffix)
        return logits[:, first - 1:last - 1].reshape(-1, logits.shape[-1]), input_ids[:, first:last].reshape(-1)

    def loss(self, model, batch):
        if self.objective in EMBEDDING_OBJECTIVES and self.teacher is None:
            raise CompressorError("the text task's loss needs the dense teacher model")
        if self.objective == "hidden_states":
            input_ids, mask = batch[0], batch[1]
            student = self.hidden(model, input_ids, mask)
            with torch.no_grad():
                target = self.hidden(self.teacher, input_ids, mask)
            m = mask.to(student.dtype).unsqueeze(-1)
            return ((student - target).pow(2) * m).sum() / (m.sum() * student.shape[-1]).clamp_min(1.0)
        if self.objective == "embedding":
            return self._embedding_loss(model, batch[0], batch[1])
        logits, targets = self._scored(model, batch)
        ce = F.cross_entropy(logits.float(), targets)
        w = self.config.distill_weight
        if not w:
            return ce
        if self.teacher is None:
            raise CompressorError("task distill_weight needs the dense teacher model")
        with torch.no_grad():
            teacher, _ = self._scored(self.teacher, batch)
        return (1 - w) * ce + w * kl_distill(logits, teacher, self.config.temperature)

    def _embedding_loss(self, model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``embedding``: one minus the cosine of the mean-pooled last hidden states to the teacher's,
        plus the mean over the blocks of each block's output MSE to the teacher's, relative to the
        teacher's mean square there. The block term keeps every block on course for the pruned ones
        after it; the pooled cosine is the figure the evaluation reports, where an MSE of the last
        hidden states spends the model's capacity on the few outlier features (BENCHMARKS.md, the
        pretrained encoder: both terms together recover the most)."""
        def states(m: nn.Module) -> tuple[torch.Tensor, ...]:
            out = m(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            blocks = tuple(getattr(out, "hidden_states", None) or ())[1:]  # not the embedding's output
            if not blocks:
                raise CompressorError("the text task's embedding objective needs a Hugging Face model that returns "
                                      "hidden_states; this one returns none")
            return blocks

        student = states(model)
        with torch.no_grad():
            teacher = states(self.teacher)
        pooled = F.cosine_similarity(mean_pool(student[-1].float(), mask), mean_pool(teacher[-1].float(), mask), dim=-1)
        loss = (1 - pooled).mean()
        m = mask.to(torch.float32).unsqueeze(-1)
        terms = [((s.float() - t.float()).pow(2) * m).sum() / ((t.float().pow(2) * m).sum()).clamp_min(1e-12)
                 for s, t in zip(student, teacher)]
        return loss + torch.stack(terms).mean()

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

    def set_reference(self, model: nn.Module) -> None:
        """``hidden_states``, ``embedding``: compare later evaluations with ``model``'s embeddings (the dense model's,
        taken before any pass changes it) instead of the teacher's."""
        if self.objective in EMBEDDING_OBJECTIVES:
            self._teacher_embeddings = self.embed(model)

    @torch.no_grad()
    def held_out_perplexity(self, model: nn.Module, max_tokens: int | None = None) -> float:
        """The LM objectives' held-out figure: exp of the mean cross-entropy over the held-out windows
        (``causal_lm``: every text token after a window's first; ``masked_lm``: the masked positions,
        masks seeded by ``seed``), on at most ``max_tokens`` (default ``eval_tokens``) held-out tokens."""
        c = self.config
        cap = max_tokens or c.eval_tokens
        ids = self.eval_ids[:cap] if cap else self.eval_ids
        body = c.seq_len - self.specials
        n = ids.numel() // body
        if n == 0:
            raise CompressorError(f"the held-out text of {c.eval_corpus or c.corpus!r} has {ids.numel()} tokens, fewer "
                                  f"than one window of {body}")
        windows = self._wrap(ids[:n * body].view(n, body))
        gen = torch.Generator().manual_seed(c.seed + 1234)
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for i in range(0, n, c.batch_size):
            batch = (windows[i:i + c.batch_size], torch.ones_like(windows[i:i + c.batch_size]))
            if self.objective == "masked_lm":
                masked, labels = self._mask(batch[0], gen)
                batch = (masked, batch[1], labels)
            logits, targets = self._scored(model, batch)
            total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            count += targets.numel()
        model.train(was)
        return math.exp(total / count)

    def evaluate(self, model, max_tokens: int | None = None):
        """``causal_lm``: ``{"perplexity"}``; ``masked_lm``: ``{"masked_perplexity"}`` (held-out text);
        ``hidden_states``, ``embedding``: the cosine of the model's sentence embeddings to the dense teacher's (or the
        reference's, :meth:`set_reference`) on the held-out sentences, mean and minimum."""
        if self.objective == "causal_lm":
            return {"perplexity": self.held_out_perplexity(model, max_tokens)}
        if self.objective == "masked_lm":
            return {"masked_perplexity": self.held_out_perplexity(model, max_tokens)}
        if not self.eval_text:
            raise CompressorError(f"the held-out text of {self.config.eval_corpus or self.config.corpus!r} has no "
                                  "sentence of 4 words or more to evaluate")
        if self._teacher_embeddings is None:
            if self.teacher is None:
                raise CompressorError("the text task's evaluation needs the dense teacher model")
            self._teacher_embeddings = self.embed(self.teacher)
        cos = F.cosine_similarity(self.embed(model), self._teacher_embeddings, dim=-1)
        return {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min())}
