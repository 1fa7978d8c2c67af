"""A Hugging Face model directory: symbolic tracing fails, torch.export finds the layers, it compresses."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

import compressor
from compressor.recipe import parse_recipe
from hf_tools import tiny_bert_with_tokenizer  # tests/hf_tools.py

transformers = pytest.importorskip("transformers")


def test_bert_directory_compresses_and_round_trips(tmp_path):
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    spec = compressor.load_model(str(tmp_path / "bert"))
    captured = compressor.capture(spec.model, spec.example_inputs)
    assert captured.method in ("export", "walk") and captured.attempts[0][0] == "fx"
    names = [t.name for t in captured.targets]
    for layer in range(2):
        for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense", "intermediate.dense", "output.dense"):
            assert f"encoder.layer.{layer}.{part}.weight" in names
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "ignore": ["pooler"]}]})).run(
        spec, out=tmp_path / "art", console=Console(file=io.StringIO()))
    rows = {r.name: r for r in result.report.layers}
    assert rows["encoder.layer.0.attention.self.query.weight"].sparsity == pytest.approx(0.5)
    assert rows["pooler.dense.weight"].pattern == "dense"
    x = spec.example_inputs[0]
    loaded = compressor.load(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(x).last_hidden_state, result.model(x).last_hidden_state)


def test_bert_exports_to_onnx_through_the_recipe(tmp_path):
    """Hugging Face outputs are ModelOutput mappings: flattening them recursed through the key
    strings (RecursionError) and lost the whole finished run at export."""
    from compressor.kernels import flatten_outputs, ort_session

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    spec = compressor.load_model(str(tmp_path / "bert"))
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "ignore": ["pooler"]}], "export": {"onnx": True}})
    result = compressor.Pipeline(recipe).run(spec, out=tmp_path / "art", console=Console(file=io.StringIO()))
    assert result.report.metrics["onnx_rel_error(model.onnx)"]["after"] < 1e-4
    session = ort_session(str(tmp_path / "art" / "model.onnx"))
    # named after the forward's parameters and the ModelOutput's keys, with dynamic batch and sequence
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "pooler_output"]
    x = torch.randint(0, 100, (3, 11))  # not the example's 1 x 16
    got = session.run(None, {"input_ids": x.numpy()})
    with torch.no_grad():
        expected = flatten_outputs(result.model(x))
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-4, atol=1e-5)


def test_a_directory_loads_as_the_class_its_config_names(tmp_path):
    """architectures: ["BertForMaskedLM"] keeps the MLM head (AutoModel dropped it); the artifact
    rebuilds the same class; a class transformers does not implement is refused in one line."""
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    spec = compressor.load_model(str(tmp_path / "mlm"))
    assert type(spec.model).__name__ == "BertForMaskedLM"
    names = [t.name for t in compressor.capture(spec.model, spec.example_inputs).targets]
    assert "cls.predictions.transform.dense.weight" in names
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "targets": ["bert"]}]})).run(
        spec, out=tmp_path / "art", console=Console(file=io.StringIO()))
    loaded = compressor.load(tmp_path / "art")
    x = spec.example_inputs[0]
    with torch.no_grad():
        assert type(loaded).__name__ == "BertForMaskedLM"
        assert torch.equal(loaded(x).logits, result.model(x).logits)
    cfg = json.loads((tmp_path / "mlm" / "config.json").read_text())
    cfg["architectures"] = ["EvilModelWithRemoteCode"]
    (tmp_path / "mlm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(compressor.ModelLoadError, match="does not implement"):
        compressor.load_model(str(tmp_path / "mlm"))


def test_gpt2_conv1d_layers_compress_as_linear(tmp_path):
    """GPT-2's Conv1D layers (weight stored in x out) were not captured: they load as the nn.Linear
    computing the same, so every pass, the report, the artifact and the export see them."""
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    original = transformers.GPT2LMHeadModel(config).eval()
    original.save_pretrained(tmp_path / "gpt2")
    spec = compressor.load_model(str(tmp_path / "gpt2"))
    x = spec.example_inputs[0]
    with torch.no_grad():  # the same function as the transformers model it came from
        torch.testing.assert_close(spec.model(x).logits, original(x).logits, rtol=1e-5, atol=1e-5)
    names = {t.name: t for t in compressor.capture(spec.model, spec.example_inputs).targets}
    for part, shape in (("attn.c_attn", (96, 32)), ("attn.c_proj", (32, 32)), ("mlp.c_fc", (128, 32)),
                        ("mlp.c_proj", (32, 128))):
        target = names[f"transformer.h.1.{part}.weight"]
        assert target.kind == "linear" and target.shape == shape
    recipe = parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "targets": ["Linear"], "ignore": ["lm_head"]}],
                           "export": {"onnx": True}})
    result = compressor.Pipeline(recipe).run(spec, out=tmp_path / "art", console=Console(file=io.StringIO()))
    rows = {r.name: r for r in result.report.layers}
    assert rows["transformer.h.0.mlp.c_fc.weight"].sparsity == pytest.approx(0.5)
    loaded = compressor.load(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, result.model(x).logits)
    assert (tmp_path / "art" / "model.onnx").is_file()


@pytest.mark.parametrize("damage,match", [
    ("bad_json", "not a loadable Hugging Face model directory"),
    ("no_weights", "no file named model.safetensors"),
    ("unknown_type", "not a loadable Hugging Face model directory"),
    ("no_config", "has no config.json"),
    ("unknown_architecture", "architecture 'MadeUpModel', which transformers does not implement"),
])
def test_a_broken_model_directory_is_one_line(tmp_path, capsys, damage, match):
    from compressor.cli import main

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    if damage == "bad_json":
        (tmp_path / "bert" / "config.json").write_text("{not json")
    elif damage == "no_weights":
        for f in (tmp_path / "bert").glob("*.safetensors"):
            f.unlink()
    elif damage == "no_config":
        (tmp_path / "bert" / "config.json").unlink()
    else:
        cfg = json.loads((tmp_path / "bert" / "config.json").read_text())
        change = {"model_type": "no-such-type"} if damage == "unknown_type" else {"architectures": ["MadeUpModel"]}
        (tmp_path / "bert" / "config.json").write_text(json.dumps({**cfg, **change}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text('{"version": 1, "passes": [{"pass": "nm_prune"}]}')
    capsys.readouterr()  # save_pretrained's progress bar
    code = main(["--recipe", str(recipe), "--model", str(tmp_path / "bert"), "--out", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(tmp_path / "bert") in err and match in err
    assert not (tmp_path / "art").exists()


def test_text_task_feeds_input_ids_and_attention_mask_to_calibration(tmp_path):
    """The text task tokenizes with the directory's own tokenizer; nm_convert's calibration calls the
    model with input_ids and attention_mask as keywords; the evaluation is the embedding cosine."""
    from compressor.tasks import TaskConfig, build_task

    spec = compressor.load_model(str(tiny_bert_with_tokenizer(tmp_path / "bert")))
    assert spec.source["directory"] == str((tmp_path / "bert").resolve())
    task = build_task(TaskConfig(name="text", seq_len=16, batch_size=4, eval_sentences=8), spec, spec.model)
    ids, mask = task.batch(0)
    assert task.objective == "embedding"  # a model without an LM head: windows from sentence starts, up to seq_len
    assert ids.shape == mask.shape and ids.shape[0] == 4 and 8 <= ids.shape[1] <= 16 and bool(mask.all())
    assert ids[:, 0].eq(2).all() and ids[:, -1].eq(3).all()  # [CLS] ... [SEP]
    assert set(task.inputs((ids, mask))) == {"input_ids", "attention_mask"}
    assert len(task.eval_text) == 8
    seen = []
    handle = spec.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True)
    step = {"pass": "nm_convert", "n": 2, "m": 4, "reconstruct": "lstsq", "rows": 64, "ignore": ["pooler"],
            "calibration": {"name": "text", "seq_len": 16, "batch_size": 4}}
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [step]})).run(
        spec, console=Console(file=io.StringIO()))
    handle.remove()
    assert ["attention_mask", "input_ids"] in seen
    # the encoder's blocks chain (checked on a batch): activations were carried block by block
    assert any("block by block through 'encoder.layer' (2 blocks" in n for n in result.report.passes[0]["notes"])
    layer = result.report.passes[0]["metrics"]["encoder.layer.0.intermediate.dense.weight"]
    assert layer["reconstruction_error_after"] <= layer["reconstruction_error_before"]
    dense = compressor.load_model(str(tmp_path / "bert")).model
    metrics = build_task(TaskConfig(name="text", seq_len=16, eval_sentences=8), spec, dense).evaluate(result.model)
    assert set(metrics) == {"embedding_cosine_mean", "embedding_cosine_min"}
    assert -1.0 <= metrics["embedding_cosine_min"] <= metrics["embedding_cosine_mean"] <= 1.0
    same = build_task(TaskConfig(name="text", seq_len=16, eval_sentences=8), spec, dense).evaluate(dense)
    assert same["embedding_cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["embedding_cosine_min"] < same["embedding_cosine_min"] - 1e-6  # the pruned model differs


def test_text_tasks_on_one_corpus_tokenize_it_once(tmp_path):
    """Every pass, benchmark run and sensitivity point builds its own text task: the corpus is tokenized
    once per tokenizer and text, and the ids are those of a direct tokenization of its paragraphs."""
    from compressor import tasks, text_task
    from compressor.corpus import corpus_text, split_text

    spec = compressor.load_model(str(tiny_bert_with_tokenizer(tmp_path / "bert")))
    config = tasks.TaskConfig(name="text", corpus="pydoc", seq_len=16, eval_sentences=4)
    text_task._TOKENIZED.clear()
    first = text_task.TextTask(config, spec, spec.model)
    calls = []
    real = type(first.tokenizer).__call__

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    type(first.tokenizer).__call__ = spy
    try:
        second = text_task.TextTask(config, spec, spec.model)
    finally:
        type(first.tokenizer).__call__ = real
    assert torch.equal(first.train_ids, second.train_ids)
    assert len(calls) <= 2  # the special-token probe only, not the corpus
    paragraphs = [p for p in split_text(corpus_text("pydoc")).train.split("\n\n") if p.strip()][:50]
    direct = [i for row in first.tokenizer(paragraphs, add_special_tokens=False)["input_ids"] for i in row]
    assert first.train_ids[:len(direct)].tolist() == direct


def test_text_task_refuses_a_tokenizer_the_embedding_cannot_hold_before_any_layer_changes(tmp_path):
    spec = compressor.load_model(str(tiny_bert_with_tokenizer(tmp_path / "bert", vocab_size=50)))
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    recipe = parse_recipe({"version": 1, "passes": [
        {"pass": "nm_prune", "ignore": ["pooler"]},
        {"pass": "nm_convert", "reconstruct": "lstsq", "ignore": ["pooler"], "calibration": {"name": "text", "seq_len": 16}}]})
    with pytest.raises(compressor.CompressorError) as info:
        compressor.Pipeline(recipe).run(spec, console=Console(file=io.StringIO()))
    message = str(info.value)
    assert "\n" not in message and "90 tokens" in message and "50 rows" in message
    assert all(torch.equal(v, before[k]) for k, v in spec.model.state_dict().items())


def test_text_task_without_a_tokenizer_says_so_in_one_line(tmp_path):
    from compressor.tasks import TaskConfig, build_task

    tiny_bert_with_tokenizer(tmp_path / "bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / "bert" / name).unlink(missing_ok=True)
    spec = compressor.load_model(str(tmp_path / "bert"))
    with pytest.raises(compressor.CompressorError, match="no usable tokenizer") as info:
        build_task(TaskConfig(name="text", seq_len=16), spec, spec.model)
    assert "\n" not in str(info.value)
    builtin = compressor.load_model("lstm-lm")
    with pytest.raises(compressor.CompressorError, match="needs a tokenizer"):
        build_task(TaskConfig(name="text", seq_len=16), builtin, builtin.model)


def test_text_task_longer_than_the_models_positions_is_one_line_before_any_layer_changes(tmp_path, capsys):
    """seq_len 65 on a model of 64 positions (position embeddings have no row 64: an IndexError mid-pass)."""
    from compressor.cli import main

    tiny_bert_with_tokenizer(tmp_path / "bert")
    recipe = tmp_path / "r.yaml"
    recipe.write_text('{"version": 1, "passes": [{"pass": "nm_prune", "ignore": ["pooler"]}, {"pass": "nm_convert", '
                      '"ignore": ["pooler"], "calibration": {"name": "text", "seq_len": 65}}]}')
    capsys.readouterr()
    code = main(["--recipe", str(recipe), "--model", str(tmp_path / "bert"), "--out", str(tmp_path / "art")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "seq_len 65 is longer than the model's 64 positions" in err and not (tmp_path / "art").exists()
    spec = compressor.load_model(str(tmp_path / "bert"))
    from compressor.tasks import TaskConfig, build_task

    assert build_task(TaskConfig(name="text", seq_len=64, batch_size=2, objective="hidden_states"), spec, None).batch(0)[0].shape == (2, 64)
