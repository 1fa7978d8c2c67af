"""Smoke tests of ``compress bench quality`` (block pruning variants) at a toy size: the figures
are not asserted, only what must hold whatever the machine."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from compressor.bench import quality as bench
from compressor.recipe import parse_recipe


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_recipe_follows_prune_end_and_pattern():
    args = _args("--steps", "300", "--prune-end", "0.33", "--unbalanced", "--block", "8")
    recipe = bench._recipe("block90", args)
    step = recipe["passes"][0]
    assert step["end"] == 99 and step["balanced"] is False and step["block"] == [8, 8]
    parse_recipe(recipe)  # a valid recipe
    assert bench._recipe("block90", _args("--steps", "300"))["passes"][0]["end"] == 225  # default 3/4
    assert bench._recipe("block90", _args("--steps", "300"))["passes"][0]["balanced"] is True
    assert bench._recipe("block90", _args("--steps", "300"))["passes"][0]["ranking"] == "layer"
    parse_recipe(glob := bench._recipe("block90", _args("--steps", "300", "--ranking", "global")))
    assert glob["passes"][0]["ranking"] == "global"
    assert bench._recipe("block90", _args("--steps", "300"))["passes"][0]["score"] == "max_abs"
    parse_recipe(l2 := bench._recipe("block90", _args("--steps", "300", "--score", "l2")))
    assert l2["passes"][0]["score"] == "l2"


def test_bad_prune_end_is_refused_before_training():
    with pytest.raises(SystemExit, match="--prune-end"):
        bench.run(_args("--prune-end", "1.5", "--corpus", "pydoc"))
    with pytest.raises(SystemExit, match="--prune-end"):
        bench.run(_args("--gates", "--prune-end", "0", "--corpus", "pydoc"))
    with pytest.raises(SystemExit, match="--prune-start"):
        bench.run(_args("--prune-start", "0.4", "--prune-end", "0.33", "--corpus", "pydoc"))


def test_recipe_follows_prune_start():
    step = bench._recipe("block90", _args("--steps", "300", "--prune-start", "0.1", "--prune-end", "0.33"))["passes"][0]
    assert step["start"] == 30 and step["end"] == 99 and step["freq"] == 7  # 300 / 40 updates
    assert bench._recipe("block90", _args("--steps", "300", "--prune-updates", "150"))["passes"][0]["freq"] == 2
    with pytest.raises(SystemExit, match="--prune-updates"):
        bench.run(_args("--prune-updates", "0", "--corpus", "pydoc"))
    assert bench._recipe("block90", _args("--steps", "300"))["passes"][0]["start"] == 0


def test_distill_needs_a_teacher_before_any_training(tmp_path):
    with pytest.raises(SystemExit, match="--distill needs a teacher"):
        bench.run(_args("--distill", "0.5", "--variants", "block90,dense", "--corpus", "pydoc"))
    with pytest.raises(SystemExit, match="not --gates"):
        bench.run(_args("--gates", "--distill", "0.5", "--corpus", "pydoc"))
    with pytest.raises(SystemExit, match="give --distill"):
        bench.run(_args("--teacher", str(tmp_path / "none.pt"), "--corpus", "pydoc"))
    with pytest.raises(SystemExit, match="no such file"):
        bench.run(_args("--distill", "0.5", "--teacher", str(tmp_path / "none.pt"), "--corpus", "pydoc"))
    args = _args("--distill", "0.5", "--temperature", "2", "--steps", "300")
    task = bench._recipe("block90", args)["passes"][0]["train"]["task"]
    assert task["distill_weight"] == 0.5 and task["temperature"] == 2.0
    assert "distill_weight" not in bench._recipe("dense", args)["passes"][0]["train"]["task"]  # the baseline learns from labels


def test_saved_dense_weights_teach_a_later_run(tmp_path):
    """--save-dir writes the dense model; a later --distill run loads it as --teacher (a mismatched
    file is refused), and the run with the dense variant first uses that model directly."""
    common = ("--steps", "4", "--hidden", "32", "--block", "4", "--batch", "8", "--seq-len", "32", "--corpus", "pydoc")
    assert bench.run(_args(*common, "--variants", "dense", "--save-dir", str(tmp_path / "m"), "--json", str(tmp_path / "d.json"))) == 0
    saved = torch.load(tmp_path / "m" / "dense.pt", weights_only=True)
    assert saved["rnn.weight_hh_l0"].shape == (128, 32)
    teacher = bench._load_teacher(_args(*common, "--teacher", str(tmp_path / "m" / "dense.pt")))
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(SystemExit, match="does not match the model"):
        bench._load_teacher(_args("--teacher", str(tmp_path / "m" / "dense.pt")))  # the hidden-256 LM
    out = tmp_path / "k.json"
    assert bench.run(_args(*common, "--variants", "block90", "--distill", "0.5", "--teacher",
                           str(tmp_path / "m" / "dense.pt"), "--json", str(out))) == 0
    assert json.loads(out.read_text())["results"]["block90"]["test_perplexity"] > 1.0
    # --init: the variants start from the saved model (its test perplexity is the "before" figure)
    from compressor.tasks import LMTask, TaskConfig

    spec = bench._start_model(_args(*common))
    lm = LMTask(TaskConfig(corpus="pydoc", seq_len=32, batch_size=8, eval_tokens=0), spec.vocab)
    assert bench.run(_args(*common, "--variants", "block90", "--init", str(tmp_path / "m" / "dense.pt"),
                           "--json", str(out))) == 0
    before = json.loads(out.read_text())["results"]["block90"]["before_finetune"]
    assert before == pytest.approx(lm.perplexity(teacher, lm.test_ids), rel=1e-6)
    assert before != pytest.approx(lm.perplexity(spec.model, lm.test_ids), rel=1e-3)
    with pytest.raises(SystemExit, match="--init .* does not match the model"):
        bench.run(_args("--init", str(tmp_path / "m" / "dense.pt"), "--corpus", "pydoc"))
    with pytest.raises(SystemExit, match="--init .*no such file"):
        bench.run(_args("--init", str(tmp_path / "none.pt"), "--corpus", "pydoc"))
    (tmp_path / "notes.pt").write_text("not a checkpoint")  # a one-line refusal, not torch's unpickling traceback
    with pytest.raises(SystemExit, match="--teacher .*notes.pt is not a torch checkpoint"):
        bench._load_teacher(_args(*common, "--teacher", str(tmp_path / "notes.pt")))
    # a safetensors file of the saved weights loads like the .pt
    from safetensors.torch import save_file

    save_file(saved, str(tmp_path / "dense.safetensors"))
    teacher2 = bench._load_teacher(_args(*common, "--teacher", str(tmp_path / "dense.safetensors")))
    assert all(torch.equal(teacher2.state_dict()[k], v) for k, v in saved.items())


def test_gates_static_baseline_follows_prune_end():
    step = bench._gate_recipe("static", _args("--gates", "--steps", "300", "--prune-end", "0.33"), 0.5)["passes"][0]
    assert step["pass"] == "gradual_block_prune" and step["end"] == 99
    assert bench._gate_recipe("static", _args("--gates", "--steps", "300"), 0.5)["passes"][0]["end"] == 225


def test_quality_bench_fresh_small_lm(tmp_path):
    out = tmp_path / "q.json"
    args = _args("--steps", "6", "--variants", "dense,block90", "--hidden", "32", "--block", "4",
                 "--batch", "8", "--seq-len", "64", "--corpus", "pydoc", "--json", str(out))
    assert bench.run(args) == 0
    results = json.loads(out.read_text())["results"]
    assert results["dense"]["lstm_sparsity"] == 0.0
    # balanced 4x4 blocks at 90% on 32-wide matrices keep one block of 8 per block row (87.5%), and 2 of
    # 16 for the 64-wide input matrix: the measured figure lands there, not at zero or one
    assert 0.85 <= results["block90"]["lstm_sparsity"] <= 0.9
    layers = results["block90"]["layer_sparsity"]
    assert sorted(layers) == ["rnn.weight_hh_l0", "rnn.weight_hh_l1", "rnn.weight_ih_l0", "rnn.weight_ih_l1"]
    assert layers["rnn.weight_ih_l0"] == pytest.approx(0.875) and layers["rnn.weight_hh_l0"] == pytest.approx(0.875)
    for r in results.values():
        assert r["test_perplexity"] > 1.0 and r["before_finetune"] > 1.0


def test_fresh_lm_keeps_vocabulary_and_changes_width():
    from compressor import load_model

    spec = load_model("lstm-lm")
    torch.manual_seed(0)
    fresh = bench._fresh_lm(spec, 48)
    assert fresh.model.rnn.hidden_size == 48 and fresh.vocab is spec.vocab
    assert fresh.model.embedding.num_embeddings == spec.model.embedding.num_embeddings
    assert fresh.source["config"]["hidden"] == 48 and spec.source["config"]["hidden"] == 256


def test_seed_reaches_recipe_and_batches(tmp_path):
    recipe = bench._recipe("block90", _args("--steps", "300", "--seed", "3"))
    assert recipe["seed"] == 3 and recipe["passes"][0]["train"]["task"]["seed"] == 3
    assert parse_recipe(recipe).seed == 3
    assert bench._recipe("dense", _args("--steps", "300"))["seed"] == 0  # the default keeps earlier runs' figures

    def dense_ppl(seed):
        out = tmp_path / f"s{seed}.json"
        bench.run(_args("--steps", "4", "--variants", "dense", "--hidden", "16", "--batch", "4", "--seq-len", "32",
                        "--corpus", "pydoc", "--seed", str(seed), "--json", str(out)))
        return json.loads(out.read_text())["results"]["dense"]["test_perplexity"]

    first = dense_ppl(1)
    assert dense_ppl(1) == first  # a seed reproduces its run
    assert dense_ppl(2) != first  # another seed draws other batches and another initialisation
