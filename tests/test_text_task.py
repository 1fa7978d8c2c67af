"""The text task's objectives on Hugging Face models: causal LM and masked LM losses and held-out
perplexities against transformers' own ``labels=`` loss (the independent reference), the masking, the
objective chosen from the model's class, one-line refusals, and the report's held-out metric."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from rich.console import Console

import compressor
from compressor.errors import CompressorError, RecipeError
from compressor.recipe import parse_recipe
from compressor.tasks import TaskConfig, build_task
from compressor.corpus import corpus_text, split_text
from compressor.text_task import EMBEDDING_MIN_TOKENS, IGNORE, MASK_FRACTION, sentence_runs, split_sentences

from hf_tools import tiny_hf_with_tokenizer  # tests/hf_tools.py

pytest.importorskip("transformers")
QUIET = Console(file=io.StringIO())


def _task(tmp_path, architecture, **config):
    spec = compressor.load_model(str(tiny_hf_with_tokenizer(tmp_path / architecture, architecture)))
    config = TaskConfig(**{"name": "text", "corpus": "pydoc", "seq_len": 16, "batch_size": 4, "eval_tokens": 140,
                           **config})
    return spec, build_task(config, spec, copy.deepcopy(spec.model), ("batch", "loss", "evaluate"))


def _reference_perplexity(model, windows, labels):
    """exp of the mean cross-entropy transformers computes for ``labels`` (-100: not scored)."""
    total = count = 0
    with torch.no_grad():
        for w, y in zip(windows, labels):
            n = int((y[:, 1:] != IGNORE).sum()) if type(model).__name__.endswith("LMHeadModel") else int((y != IGNORE).sum())
            total += float(model(input_ids=w, attention_mask=torch.ones_like(w), labels=y).loss) * n
            count += n
    return math.exp(total / count)


def test_causal_lm_loss_and_perplexity_are_transformers_own(tmp_path):
    spec, task = _task(tmp_path, "GPT2LMHeadModel")
    assert task.objective == "causal_lm"
    model = spec.model.eval()
    ids, mask = task.batch(3)
    assert ids.shape == (4, 16) and bool((ids[:, 0] == task.prefix[0]).all())
    # scored: every text token after the first, predicted from the tokens before it (not [CLS], not [SEP])
    labels = ids.clone()
    labels[:, :1] = IGNORE
    labels[:, -1:] = IGNORE
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(task.loss(model, (ids, mask)), ref, rtol=1e-5, atol=1e-6)
    # held-out: windows of the eval text wrapped in the special tokens, the same scored positions
    body = 16 - task.specials
    n = task.eval_ids[:140].numel() // body
    windows = task._wrap(task.eval_ids[:n * body].view(n, body))
    lab = windows.clone()
    lab[:, :1] = IGNORE
    lab[:, -1:] = IGNORE
    want = _reference_perplexity(model, windows.split(4), lab.split(4))
    assert task.evaluate(model) == {"perplexity": pytest.approx(want, rel=1e-5)}


def test_masked_lm_masks_text_positions_only_and_matches_transformers_loss(tmp_path):
    spec, task = _task(tmp_path, "BertForMaskedLM", batch_size=64)
    assert task.objective == "masked_lm"
    model = spec.model.eval()
    masked, mask, labels = task.batch(0)
    picked = labels != IGNORE
    assert bool((masked[picked] == task.mask_id).all()) and bool((masked[~picked] != task.mask_id).all())
    assert not bool(picked[:, 0].any()) and not bool(picked[:, -1].any())  # never [CLS] / [SEP]
    assert bool(picked.any(1).all())  # at least one per window
    share = float(picked[:, 1:-1].float().mean())
    assert abs(share - MASK_FRACTION) < 0.06  # the first draw and the forced one: about 15% of 14 positions
    assert bool((labels[picked] != task.mask_id).all())  # the original ids
    same = task.batch(0)
    assert all(torch.equal(a, b) for a, b in zip(same, (masked, mask, labels)))  # a pure function of the step
    ref = model(input_ids=masked, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(task.loss(model, (masked, mask, labels)), ref, rtol=1e-5, atol=1e-6)
    first = task.evaluate(model)
    assert set(first) == {"masked_perplexity"} and first == task.evaluate(model)  # seeded masks
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert task.evaluate(model)["masked_perplexity"] != first["masked_perplexity"]


def test_distill_weight_mixes_the_teachers_logits_into_an_lm_objective(tmp_path):
    spec, task = _task(tmp_path, "GPT2LMHeadModel", distill_weight=1.0, temperature=2.0)
    batch = task.batch(0)
    # the student is the teacher: nothing to distil
    assert float(task.loss(task.teacher, batch)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in spec.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert float(task.loss(spec.model, batch).detach()) > 1e-4


def test_embedding_objective_trains_the_pooled_cosine_on_whole_sentences(tmp_path):
    spec, task = _task(tmp_path, "BertModel", objective="embedding", seq_len=32)
    assert task.objective == "embedding"
    # the reference: every run of one or two consecutive sentences of the training text, each sentence
    # tokenized alone
    sentences = split_sentences(split_text(corpus_text("pydoc")).train)
    ids = [task.tokenizer(x, add_special_tokens=False)["input_ids"] for x in sentences]
    runs = {tuple(ids[i]) for i in range(len(ids))} | {tuple(ids[i] + ids[i + 1]) for i in range(len(ids) - 1)}
    lengths = set()
    for step in range(24):
        batch_ids, mask = task.batch(step)
        assert all(torch.equal(a, b) for a, b in zip(task.batch(step), (batch_ids, mask)))  # a pure function of the step
        assert bool((mask == 1).all()) and batch_ids.shape[0] == 4 and EMBEDDING_MIN_TOKENS <= batch_ids.shape[1] <= 32
        lengths.add(batch_ids.shape[1])
        assert bool((batch_ids[:, 0] == task.prefix[0]).all()) and bool((batch_ids[:, -1] == task.suffix[-1]).all())
        for row in batch_ids[:, 1:-1].tolist():
            assert tuple(row) in runs, task.tokenizer.decode(row)
    assert len(lengths) > 3  # each batch draws its own length
    # the loss, by hand: one minus the cosine of the mean of the last hidden states (no padding: a plain
    # mean), plus each block's output MSE to the teacher's relative to the teacher's mean square
    model, batch = spec.model.eval(), task.batch(5)
    assert float(task.loss(task.teacher, batch)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        out = [m(input_ids=batch[0], attention_mask=batch[1], output_hidden_states=True) for m in (model, task.teacher)]
    pooled = [o.last_hidden_state.mean(1) for o in out]
    blocks = [((s - t).pow(2).mean() / t.pow(2).mean()) for s, t in zip(out[0].hidden_states[1:], out[1].hidden_states[1:])]
    want = 1 - torch.nn.functional.cosine_similarity(*pooled, dim=-1).mean() + sum(blocks) / len(blocks)
    torch.testing.assert_close(task.loss(model, batch), want, rtol=1e-5, atol=1e-6)
    assert set(task.evaluate(model)) == {"embedding_cosine_mean", "embedding_cosine_min"}
    with pytest.raises(CompressorError, match="the embedding objective is distillation already"):
        build_task(TaskConfig(name="text", seq_len=16, objective="embedding", distill_weight=0.5), spec, None)


def test_sentence_runs_are_one_or_two_sentences_that_fit_else_windows():
    # sentences of 3, 5 and 2 tokens at 0, 3 and 8; pairs (0, 8) and (3, 7) are longer than 6
    starts, lengths = sentence_runs(torch.tensor([3, 5, 2]), shortest=2, longest=6)
    assert starts.tolist() == [8, 0, 3] and lengths.tolist() == [2, 3, 5]  # sorted by length
    starts, lengths = sentence_runs(torch.tensor([3, 5, 2]), shortest=2, longest=8)
    assert sorted(zip(starts.tolist(), lengths.tolist())) == [(0, 3), (0, 8), (3, 5), (3, 7), (8, 2)]
    # no run fits: windows of the longest length from every position
    starts, lengths = sentence_runs(torch.tensor([3, 5, 2]), shortest=1, longest=1)
    assert starts.tolist() == list(range(10)) and lengths.tolist() == [1] * 10


def test_objectives_the_model_cannot_serve_are_one_line(tmp_path):
    spec = compressor.load_model(str(tiny_hf_with_tokenizer(tmp_path / "bert", "BertModel")))
    with pytest.raises(CompressorError, match=r"objective 'causal_lm' needs a \.\.\.ForCausalLM .* BertModel is not one"):
        build_task(TaskConfig(name="text", seq_len=16, objective="causal_lm"), spec, None)
    assert build_task(TaskConfig(name="text", seq_len=16), spec, None).objective == "embedding"
    with pytest.raises(CompressorError, match="distill_weight mixes distillation into an LM objective"):
        build_task(TaskConfig(name="text", seq_len=16, distill_weight=0.5), spec, None)
    with pytest.raises(RecipeError, match=r"objective: 'lm_causal' is not an objective"):
        TaskConfig(name="text", objective="lm_causal").validate("task")
    with pytest.raises(RecipeError, match="only the text task reads objective"):
        TaskConfig(name="lm", objective="causal_lm").validate("task")


@pytest.mark.parametrize("architecture, metric", [("GPT2LMHeadModel", "perplexity"), ("BertModel", "embedding_cosine_mean")])
def test_the_report_of_a_hugging_face_model_has_its_held_out_text_metric(tmp_path, architecture, metric):
    """Dense value beside the compressed one: perplexity of a decoder (the dense figure equals the task's
    evaluation of an untouched copy), the embedding cosine to the dense model of an encoder (1 before)."""
    spec = compressor.load_model(str(tiny_hf_with_tokenizer(tmp_path / architecture, architecture)))
    dense = copy.deepcopy(spec.model)
    text = {"name": "text", "corpus": "pydoc", "seq_len": 16, "batch_size": 8, "eval_tokens": 280, "eval_sentences": 16}
    step = {"pass": "sparsegpt", "sparsity": 0.5, "targets": ["Linear"], "rows": 256, "calibration": text}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    before, after = result.report.metrics[metric]["before"], result.report.metrics[metric]["after"]
    # the reference: a task built apart, its teacher an untouched copy of the dense model
    reference = build_task(TaskConfig(**text), compressor.load_model(str(tmp_path / architecture)), dense)
    assert after == pytest.approx(reference.evaluate(result.model)[metric], rel=1e-6)
    if metric == "perplexity":
        assert before == pytest.approx(reference.evaluate(dense)["perplexity"], rel=1e-6) and after != before
    else:
        assert before == pytest.approx(1.0, abs=1e-6) and after < before
