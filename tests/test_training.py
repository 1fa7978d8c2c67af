"""Fine-tuning passes: schedules against the paper's formulas, no regrowth, group lasso, tasks."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from rich.console import Console

import compressor
from compressor.errors import CompressorError, RecipeError
from compressor.passes.gradual_block_prune import cubic_sparsity, narang_threshold
from compressor.recipe import parse_recipe

QUIET = Console(file=io.StringIO())
TINY_TASK = {"name": "lm", "batch_size": 4, "seq_len": 16, "eval_tokens": 2048}


def gradual(**kw):
    train = {"steps": 24, "eval_every": 0, "checkpoint_every": 0, "lr": 0.003, "task": TINY_TASK} | kw.pop("train", {})
    return {"pass": "gradual_block_prune", "targets": ["rnn"], "block": [4, 4], "freq": 4, "train": train} | kw


def lm_fixture(load_fixture, tmp_path):
    """The fixture LSTM LM with a 30-symbol vocabulary, on a corpus with 29 distinct characters."""
    corpus = tmp_path / "corpus.txt"
    alphabet = "abcdefghijklmnopqrstuvwxyz .\n"
    gen = torch.Generator().manual_seed(1)
    corpus.write_text("".join(alphabet[i] for i in torch.randint(0, len(alphabet), (6000,), generator=gen).tolist()))
    return load_fixture("lstm_lm"), str(corpus)


def perturbed_lm(load_fixture, seed: int) -> torch.nn.Module:
    """The fixture LSTM LM (seeded) with noise on every weight: a teacher that disagrees with the student."""
    torch.manual_seed(seed)
    model = load_fixture("lstm_lm").model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_narang_threshold_matches_the_formula():
    q, start, ramp, end, freq, mult = 0.8, 10, 40, 100, 5, 1.5
    theta = 2 * q * freq / (2 * (ramp - start) + 3 * (end - ramp))
    phi = mult * theta
    assert narang_threshold(5, q, start, ramp, end, freq, mult) == 0.0
    assert narang_threshold(20, q, start, ramp, end, freq, mult) == pytest.approx(theta * 11 / freq)
    assert narang_threshold(60, q, start, ramp, end, freq, mult) == pytest.approx((theta * 31 + phi * 21) / freq)
    # frozen after end
    assert narang_threshold(500, q, start, ramp, end, freq, mult) == narang_threshold(99, q, start, ramp, end, freq, mult)


def test_cubic_schedule_end_points():
    assert cubic_sparsity(0, 0.9, 0, 100) == 0.0
    assert cubic_sparsity(100, 0.9, 0, 100) == pytest.approx(0.9)
    assert cubic_sparsity(50, 0.9, 0, 100) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    values = [cubic_sparsity(t, 0.9, 0, 100) for t in range(0, 101, 10)]
    assert values == sorted(values)


def spy_on_regrowth(monkeypatch) -> dict[str, torch.Tensor]:
    """Fail as soon as any ``set_mask`` call lets a pruned entry back in; returns the last masks."""
    seen: dict[str, torch.Tensor] = {}
    from compressor import masks as masklib

    original = masklib.set_mask

    def spy(model, name, mask, intersect=True):
        original(model, name, mask, intersect=intersect)
        current = masklib.get_mask(model, name).clone()
        if name in seen:
            assert not bool((current & ~seen[name]).any()), f"{name} regrew"
        seen[name] = current

    monkeypatch.setattr(masklib, "set_mask", spy)
    return seen


def test_gradual_target_reaches_sparsity_and_never_regrows(load_fixture, tmp_path, monkeypatch):
    spec, corpus = lm_fixture(load_fixture, tmp_path)
    seen = spy_on_regrowth(monkeypatch)
    step = gradual(sparsity=0.75, end=16, train={"task": TINY_TASK | {"corpus": corpus}})
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    for row in result.report.layers:
        if row.name.startswith("rnn."):
            # 20 rows per gate -> 5 block rows per gate; keep round(0.25 * blocks), at least 1
            assert row.sparsity == pytest.approx(0.75, abs=0.05)
            w = dict(result.model.named_parameters())[row.name]
            assert torch.equal(w != 0, result.masks[row.name] & (w != 0))
    assert len(seen) == 4


def test_gradual_global_balanced_shares_one_budget(load_fixture, tmp_path, monkeypatch):
    spec, corpus = lm_fixture(load_fixture, tmp_path)
    seen = spy_on_regrowth(monkeypatch)
    step = gradual(sparsity=0.6, end=16, balanced=True, ranking="global", train={"task": TINY_TASK | {"corpus": corpus}})
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    rows = [r for r in result.report.layers if r.name.startswith("rnn.")]
    kept_blocks = total_blocks = 0
    for row in rows:
        mask = result.masks[row.name]
        blocks = mask.reshape(mask.shape[0] // 4, 4, -1, 4).any(dim=3).any(dim=1) if mask.shape[1] % 4 == 0 else None
        assert blocks is not None
        per_row = blocks.sum(dim=1)
        assert bool((per_row == per_row[0]).all()), f"{row.name} is not balanced"
        assert torch.equal(mask, blocks.repeat_interleave(4, 0).repeat_interleave(4, 1))  # whole blocks
        kept_blocks += int(blocks.sum())
        total_blocks += blocks.numel()
        assert any("global ranking" in note for note in row.notes)
    # the budget over all four matrices: round(0.4 * blocks), minus at most one block row's worth
    budget = round(0.4 * total_blocks)
    assert budget - max(m.shape[0] // 4 for m in result.masks.values()) < kept_blocks <= budget
    assert len({r.sparsity for r in rows}) > 1  # the layers ended at different sparsities
    assert len(seen) == 4


def test_global_ranking_needs_the_target_schedule():
    with pytest.raises(RecipeError, match=r"passes\[0\]\.ranking"):
        parse_recipe({"version": 1, "passes": [{"pass": "gradual_block_prune", "schedule": "narang", "ranking": "global"}]})


def test_masked_weights_stay_zero_through_adam_momentum(load_fixture, tmp_path):
    spec, corpus = lm_fixture(load_fixture, tmp_path)
    step = gradual(sparsity=0.5, end=4, freq=1, train={"steps": 20, "task": TINY_TASK | {"corpus": corpus}})
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    for name, mask in result.masks.items():
        w = dict(result.model.named_parameters())[name]
        assert bool((w[~mask] == 0).all())


def test_group_lasso_proximal_zeroes_blocks_and_reports_norms(load_fixture, tmp_path):
    spec, corpus = lm_fixture(load_fixture, tmp_path)
    step = {"pass": "group_lasso", "targets": ["rnn"], "block": [4, 4], "lambda_g": 20.0,
            "train": {"steps": 10, "lr": 0.01, "schedule": "constant", "eval_every": 0, "checkpoint_every": 0,
                      "task": TINY_TASK | {"corpus": corpus}}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    metrics = result.report.passes[0]["metrics"]
    before, after = metrics["block_norms_before"], metrics["block_norms_after"]
    assert before["zero_fraction"] == 0.0 and after["zero_fraction"] > 0.5
    assert after["median"] < before["median"]
    for row in result.report.layers:
        if row.name.startswith("rnn."):
            w = dict(result.model.named_parameters())[row.name].detach()
            blocks = w.reshape(-1, 4, w.shape[1] // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)
            zero_blocks = float((blocks.abs().sum(1) == 0).float().mean())
            assert row.sparsity == pytest.approx(zero_blocks, abs=1e-6)  # whole blocks were zeroed


def test_combined_group_lasso_is_the_block_norm_sum_while_pruning(load_fixture):
    """gradual_block_prune's group_lasso term is lambda * sum of the 4x4 block L2 norms of the live
    weights (dense reference: reshape into blocks), masked blocks included at norm 0, until ``end``;
    after ``end`` the masks are frozen and the term is off (it would only shrink kept blocks)."""
    from compressor.capture import capture
    from compressor.passes.gradual_block_prune import _Hooks
    from compressor.pipeline import CompressionState, Pipeline

    spec = load_fixture("lstm_lm")
    recipe = parse_recipe({"version": 1, "passes": [gradual(sparsity=0.5, group_lasso=0.01, end=8, freq=4)]})
    state = CompressionState(spec, capture(spec.model, spec.example_inputs), recipe)
    entry, _, targets = Pipeline(recipe).plan(state.capture)[0]
    hooks = _Hooks(state, entry.config, targets)

    def reference():
        total = 0.0
        for t in targets:
            w = state.weight(t).double()
            blocks = w.reshape(w.shape[0] // 4, 4, w.shape[1] // 4, 4)
            total += blocks.pow(2).sum(dim=(1, 3)).sqrt().sum().item()
        return 0.01 * total

    hooks.before_step(0)  # the first mask update: half the blocks go
    assert any(bool((~state.mask(t)).any()) for t in targets)
    term = hooks.extra_loss(spec.model)
    assert term.item() == pytest.approx(reference(), rel=1e-5)
    term.backward()  # the gradient reaches the trainable weights through the masks
    assert all(state.original(t).grad is not None and state.original(t).grad.abs().sum() > 0 for t in targets)
    hooks.before_step(7)
    assert hooks.extra_loss(spec.model) is not None
    hooks.before_step(8)  # end: masks frozen, the penalty off
    assert hooks.extra_loss(spec.model) is None


def test_fine_tune_runs_without_the_pipeline(load_fixture):
    """The training loop on a state built by hand (no pipeline, so no progress bars: the state's
    default shows nothing): it trains the model the state holds, each step's loss recorded."""
    from compressor.capture import capture
    from compressor.pipeline import CompressionState
    from compressor.training import TrainHooks, fine_tune

    spec = load_fixture("mlp")
    step = {"pass": "finetune", "train": {"steps": 3, "lr": 0.01, "eval_every": 0, "checkpoint_every": 0,
                                          "task": {"name": "distill", "loss": "mse", "batch_size": 4}}}
    recipe = parse_recipe({"version": 1, "passes": [step]})
    state = CompressionState(spec, capture(spec.model, spec.example_inputs), recipe, console=QUIET)
    teacher = copy.deepcopy(spec.model)
    with torch.no_grad():  # a student away from its teacher, so the distillation loss is not zero
        for p in spec.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state.reference = teacher.eval()
    before = {n: p.detach().clone() for n, p in spec.model.named_parameters()}
    history = fine_tune(state, recipe.passes[0].config.train, TrainHooks(), "finetune")
    assert len(history["loss"]) == 3 and all(loss > 0 for loss in history["loss"])
    assert any(not torch.equal(before[n], p) for n, p in spec.model.named_parameters())


def test_group_lasso_smoothed_penalty_shrinks_norms(load_fixture, tmp_path):
    spec, corpus = lm_fixture(load_fixture, tmp_path)
    step = {"pass": "group_lasso", "targets": ["rnn"], "block": [4, 4], "lambda_g": 0.05, "method": "smoothed",
            "train": {"steps": 15, "lr": 0.01, "eval_every": 0, "checkpoint_every": 0, "task": TINY_TASK | {"corpus": corpus}}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    m = result.report.passes[0]["metrics"]
    assert m["block_norms_after"]["median"] < m["block_norms_before"]["median"]


def test_distill_task_trains_towards_the_teacher(load_fixture):
    spec = load_fixture("mlp")
    step = {"pass": "gradual_block_prune", "block": [4, 4], "sparsity": 0.5, "freq": 2, "end": 6,
            "train": {"steps": 40, "lr": 0.01, "eval_every": 40, "checkpoint_every": 0,
                      "task": {"name": "distill", "loss": "mse", "batch_size": 16}}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)
    history = result.report.passes[0]["metrics"]["history"]
    assert history["loss"][-1] < max(history["loss"][6:12])  # recovers after pruning stops
    assert "distill_loss" in history["eval"][-1]


@pytest.mark.parametrize("train,where", [
    ({"steps": 0}, "train.steps"),
    ({"lr": 0}, "train.lr"),
    ({"lr": -1.0}, "train.lr"),
    ({"warmup": 50, "steps": 10}, "train.warmup"),
    ({"task": {"name": "nonsense"}}, "train.task.name"),
    ({"task": {"seq_len": 1}}, "train.task.seq_len"),
    ({"optimiser": "adam"}, "train.optimiser"),
    ({"task": {"distill_weight": 1.5}}, "train.task.distill_weight"),
    ({"task": {"distill_weight": -0.1}}, "train.task.distill_weight"),
    ({"task": {"name": "distill", "distill_weight": 0.5}}, "train.task.distill_weight"),
    ({"task": {"temperature": 0}}, "train.task.temperature"),
])
def test_invalid_training_settings(train, where):
    with pytest.raises(RecipeError) as info:
        parse_recipe({"version": 1, "passes": [{"pass": "gradual_block_prune", "train": train}]})
    assert info.value.path == f"passes[0].{where}"


def test_schedule_must_fit_in_the_steps():
    with pytest.raises(RecipeError, match=r"passes\[0\]\.end"):
        parse_recipe({"version": 1, "passes": [{"pass": "gradual_block_prune", "end": 500, "train": {"steps": 100}}]})


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x00\x01\x02binary", "binary"), (b"ab", "too short")])
def test_bad_corpus_files(load_fixture, tmp_path, content, match):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(content)
    step = gradual(train={"task": TINY_TASK | {"corpus": str(corpus)}})
    with pytest.raises((CompressorError, ValueError), match=match):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(load_fixture("lstm_lm"), console=QUIET)


def test_missing_corpus_file(load_fixture, tmp_path):
    step = gradual(train={"task": TINY_TASK | {"corpus": str(tmp_path / "none.txt")}})
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(load_fixture("lstm_lm"), console=QUIET)


def test_distill_without_inputs_is_an_error(load_fixture):
    spec = load_fixture("mlp")
    spec.example_inputs = None
    step = gradual(targets=[], train={"task": {"name": "distill"}})
    with pytest.raises(CompressorError, match="example inputs"):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET)


def test_finetune_keeps_earlier_masks_and_lowers_the_loss(load_fixture, tmp_path):
    spec, corpus = lm_fixture(load_fixture, tmp_path)
    recipe = {"version": 1, "passes": [
        {"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5},
        {"pass": "finetune", "train": {"steps": 30, "lr": 0.01, "eval_every": 0, "checkpoint_every": 0,
                                       "task": TINY_TASK | {"corpus": corpus}}},
    ]}
    result = compressor.Pipeline(parse_recipe(recipe)).run(spec, console=QUIET)
    losses = result.report.passes[1]["metrics"]["history"]["loss"]
    assert sum(losses[-5:]) < sum(losses[:5])
    for row in result.report.layers:
        if row.name.startswith("rnn."):
            assert row.sparsity == pytest.approx(0.5, abs=0.01) and row.passes == ["block_prune"]


def _reference_kl(student, teacher, temperature):
    """T^2 * mean over positions of sum_c p_t (log p_t - log p_s), in float64, written out."""
    s = (student.double() / temperature).reshape(-1, student.shape[-1])
    t = (teacher.double() / temperature).reshape(-1, teacher.shape[-1])
    p_t = torch.exp(t) / torch.exp(t).sum(-1, keepdim=True)
    log_p_s = s - torch.log(torch.exp(s).sum(-1, keepdim=True))
    return float((p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean()) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_distill_matches_the_written_out_divergence(temperature):
    from compressor.tasks import kl_distill

    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 5, 7, generator=gen), 3 * torch.randn(2, 5, 7, generator=gen)
    assert float(kl_distill(student, teacher, temperature)) == pytest.approx(_reference_kl(student, teacher, temperature), rel=1e-5)
    assert float(kl_distill(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_lm_loss_mixes_cross_entropy_and_distillation(load_fixture, tmp_path):
    from compressor.tasks import LMTask, TaskConfig

    spec, corpus = lm_fixture(load_fixture, tmp_path)
    teacher = perturbed_lm(load_fixture, 5)
    base = TaskConfig(corpus=corpus, batch_size=4, seq_len=16)
    x, y = LMTask(base, spec.vocab).batch(0)
    with torch.no_grad():
        logits, target = spec.model(x), teacher(x)
    ce = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))
    kl = _reference_kl(logits, target, 2.0)
    assert kl > 0.01
    for w in (0.0, 0.3, 1.0):
        task = LMTask(TaskConfig(corpus=corpus, batch_size=4, seq_len=16, distill_weight=w, temperature=2.0), spec.vocab, teacher)
        with torch.no_grad():
            assert float(task.loss(spec.model, (x, y))) == pytest.approx((1 - w) * ce + w * kl, rel=1e-5)
    with pytest.raises(CompressorError, match="teacher"):
        LMTask(TaskConfig(corpus=corpus, distill_weight=0.5), spec.vocab, None)


def test_distillation_pulls_towards_the_callers_teacher(load_fixture, tmp_path):
    """With ``distill_weight`` 1 the loss is the KL to the teacher given to Pipeline.run: training
    lowers it, and the caller's teacher comes back untouched."""
    from compressor.tasks import LMTask, TaskConfig

    spec, corpus = lm_fixture(load_fixture, tmp_path)
    teacher = perturbed_lm(load_fixture, 6)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = TINY_TASK | {"corpus": corpus, "distill_weight": 1.0, "temperature": 1.0}
    step = {"pass": "finetune", "train": {"steps": 30, "lr": 0.01, "eval_every": 0, "checkpoint_every": 0, "task": task}}
    probe = LMTask(TaskConfig(corpus=corpus, batch_size=16, seq_len=16), spec.vocab)
    x = probe.batch(99)[0]

    def divergence(model):
        with torch.no_grad():
            return _reference_kl(model.eval()(x), teacher.eval()(x), 1.0)

    start = divergence(spec.model)
    teacher.train()
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(spec, console=QUIET, teacher=teacher)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    # the pipeline's own reference (the student before training) would have held it near the start
    assert divergence(result.model) < 0.7 * start
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_resume_is_refused_with_another_teacher(load_fixture, tmp_path, monkeypatch):
    """A caller's teacher is part of what identifies a run: resuming a crashed distillation with
    other teacher weights is refused and keeps the checkpoint; the same weights resume to the
    uninterrupted run's result. A run without a teacher fingerprints the recipe and model only."""
    import hashlib
    import json

    import compressor.pipeline as pipeline
    from compressor.checkpoint import fingerprint

    spec, corpus = lm_fixture(load_fixture, tmp_path)
    task = TINY_TASK | {"corpus": corpus, "distill_weight": 0.5}
    recipe = parse_recipe({"version": 1, "passes": [gradual(sparsity=0.5, train={"steps": 8, "task": task})]})

    def teacher(seed):
        return perturbed_lm(load_fixture, seed)

    def student():
        torch.manual_seed(0)  # the fixture is randomly initialised: the same weights for every run
        return lm_fixture(load_fixture, tmp_path)[0]

    ref = compressor.Pipeline(recipe).run(student(), out=tmp_path / "ref", console=QUIET, teacher=teacher(7))
    monkeypatch.setattr(pipeline, "save_artifacts", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        compressor.Pipeline(recipe).run(student(), out=tmp_path / "run", console=QUIET, teacher=teacher(7))
    monkeypatch.undo()
    with pytest.raises(CompressorError, match="different recipe, model or teacher"):
        compressor.Pipeline(recipe).run(student(), out=tmp_path / "run", console=QUIET, teacher=teacher(8), resume=True)
    resumed = compressor.Pipeline(recipe).run(student(), out=tmp_path / "run", console=QUIET, teacher=teacher(7), resume=True)
    for (name, a), (_, b) in zip(ref.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name

    s = student()
    by_hand = hashlib.sha256((recipe.to_yaml() + "\n" + json.dumps(s.source, sort_keys=True)).encode()).hexdigest()[:16]
    assert fingerprint(recipe.to_yaml(), s.source) == by_hand
    assert fingerprint(recipe.to_yaml(), s.source, teacher(7)) == fingerprint(recipe.to_yaml(), s.source, teacher(7)) != by_hand


def test_state_digest_sees_every_value_dtype_and_shape():
    """The teacher digest: equal for equal state dicts; any changed value (a 0-dim counter, one
    bf16 weight), dtype or shape changes it."""
    from compressor.checkpoint import state_digest

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(torch.bfloat16)

    base = state_digest(model())
    assert state_digest(model()) == base
    counter, weight = model(), model()
    counter[1].num_batches_tracked += 1
    with torch.no_grad():
        weight[0].weight[2, 1] += 1
    reshaped = model()
    reshaped[0].weight = torch.nn.Parameter(reshaped[0].weight.detach().reshape(3, 4))
    assert len({base, state_digest(counter), state_digest(weight), state_digest(model().float()),
                state_digest(reshaped)}) == 5
