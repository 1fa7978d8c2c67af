"""`compress export DIR --hf OUT`: an artifact back as a Hugging Face directory that from_pretrained reads.

Each round trip is checked against what the export must not change: from_pretrained reports no
missing, unexpected or mismatched key; the outputs equal those of compressor.load(DIR); every stored
weight equals the original model's weight times its mask (zeros exactly where the mask is False);
the source directory's other files arrive byte for byte and its weight files do not.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import compressor
from compressor.cli import main as cli_main
from compressor.errors import ArtifactError
from compressor.recipe import parse_recipe
from hf_tools import tiny_bert_with_tokenizer  # tests/hf_tools.py

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
QUIET = Console(file=io.StringIO())


def compress(spec, passes, out):
    compressor.Pipeline(parse_recipe({"version": 1, "passes": passes})).run(spec, out=out, console=QUIET)
    return out


def from_pretrained(cls, directory):
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def sentence_transformers_dir(path: Path) -> Path:
    """A tiny BERT with its tokenizer, the files sentence-transformers adds, a README, and weights of other
    frameworks and runtimes (which an export must not copy: they hold the dense original)."""
    tiny_bert_with_tokenizer(path)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true}')
    (path / "sentence_bert_config.json").write_text('{"max_seq_length": 64, "do_lower_case": false}')
    (path / "README.md").write_text("# tiny\n")
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "onnx").mkdir()
    (path / "onnx" / "model.onnx").write_bytes(b"dense original")
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(source directory, artifact): 2:4 on the first layer's FFN, 8x8 balanced blocks on its attention
    output run by a BlockSparseLinear kernel module (forced), the rest dense."""
    root = tmp_path_factory.mktemp("bert")
    src = sentence_transformers_dir(root / "src")
    spec = compressor.load_model(str(src))
    passes = [{"pass": "nm_prune", "targets": ["encoder.layer.0.intermediate.dense", "encoder.layer.1.output.dense"]},
              {"pass": "block_prune", "block": [8, 8], "sparsity": 0.5, "balanced": True,
               "targets": ["encoder.layer.0.attention.output.dense"]},
              {"pass": "swap_kernels", "force": True, "repeats": 1, "backend": "torch",
               "targets": ["encoder.layer.0.attention.output.dense"]}]
    return src, compress(spec, passes, root / "art")


def check_weights(out: Path, original: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], transposed=()):
    """Every tensor in OUT's weights equals the original's, times the mask where there is one."""
    stored = load_file(str(out / "model.safetensors"))
    assert masks and set(masks) <= set(stored)
    for name, tensor in stored.items():
        mask = masks.get(name)
        if mask is not None and name.removesuffix(".weight") in transposed:  # Conv1D: (in, out)
            mask = mask.t()
        want = original[name] * mask if mask is not None else original[name]
        assert torch.equal(tensor, want), name
        if mask is not None:
            assert torch.equal(tensor != 0, mask), name  # zeros exactly where the mask says (random weights: no other 0)
    return stored


def test_bert_round_trips_with_its_tokenizer_and_sentence_transformers_files(bert, tmp_path):
    src, art = bert
    assert any(r["kind"] == "block_sparse_linear" for r in compressor.read_metadata(art)["replacements"])
    out = tmp_path / "hf"
    result = compressor.export_hf(art, out)
    model = from_pretrained(transformers.AutoModel, out)
    assert type(model).__name__ == "BertModel"
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    source_tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    batch = tokenizer(["a short one.", "and a longer sentence, padded less."], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == source_tokenizer(["a short one.", "and a longer sentence, padded less."],
                                                           padding=True, return_tensors="pt")["input_ids"].tolist()
    assert not bool(batch["attention_mask"].all())
    loaded = compressor.load(art)  # with its BlockSparseLinear
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, loaded(**batch).last_hidden_state)
    original = transformers.BertModel.from_pretrained(src).state_dict()
    masks = compressor.load_masks(art)
    assert set(masks) == {f"encoder.layer.{n}.weight" for n in
                          ("0.intermediate.dense", "1.output.dense", "0.attention.output.dense")}
    check_weights(out, original, masks)
    weights = {"model.safetensors", "pytorch_model.bin", "onnx/model.onnx"}
    copied = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    copied = [name for name in copied if name not in weights]
    assert {"1_Pooling/config.json", "README.md", "config.json", "modules.json", "tokenizer_config.json"} <= set(copied)
    assert result["files"] == copied
    for name in copied:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(copied + ["model.safetensors"])
    assert result["zeros"] == {name: int((~mask).sum()) for name, mask in masks.items()}


def test_the_cli_writes_the_same_directory_and_refuses_to_overwrite_it(bert, tmp_path, capsys):
    src, art = bert
    out = tmp_path / "hf"
    assert cli_main(["export", str(art), "--hf", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BertModel" in printed and "modules.json" in printed and printed.count("\n") == 1
    first = (out / "model.safetensors").read_bytes()
    assert cli_main(["export", str(art), "--hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    (out / "stale.txt").write_text("from before")
    assert cli_main(["export", str(art), "--hf", str(out), "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() == first and not (out / "stale.txt").exists()


def test_gpt2_conv1d_weights_go_back_transposed_and_the_tied_head_stays_tied(tmp_path):
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    original = transformers.GPT2LMHeadModel(config).eval()
    original.save_pretrained(tmp_path / "gpt2")
    spec = compressor.load_model(str(tmp_path / "gpt2"))
    art = compress(spec, [{"pass": "nm_prune", "targets": ["Linear"], "ignore": ["lm_head"]}], tmp_path / "art")
    out = tmp_path / "hf"
    compressor.export_hf(art, out)
    model = from_pretrained(transformers.GPT2LMHeadModel, out)
    assert model.lm_head.weight is model.transformer.wte.weight
    model.config.use_cache = False
    x = torch.randint(0, 50, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, compressor.load(art)(x).logits)
    conv1d = [f"transformer.h.{i}.{part}" for i in range(2) for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    masks = compressor.load_masks(art)
    assert set(masks) == {f"{p}.weight" for p in conv1d}
    stored = check_weights(out, original.state_dict(), masks, transposed=conv1d)
    assert stored["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)  # Conv1D's (in, out)
    assert "lm_head.weight" not in stored  # stored once, as save_pretrained does
    for i in range(2):  # 2:4 along each output's inputs: the Conv1D weight's columns
        w = model.transformer.h[i].mlp.c_fc.weight.detach().t()
        assert int((w.reshape(128, -1, 4) != 0).sum(-1).max()) == 2


def test_a_model_that_is_not_from_hugging_face_is_refused_in_one_line(load_fixture, tmp_path, capsys):
    art = compress(load_fixture("mlp"), [{"pass": "nm_prune"}], tmp_path / "art")
    assert cli_main(["export", str(art), "--hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "not made from a Hugging Face model directory" in err and "factory" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()


@pytest.fixture
def received(bert, tmp_path):
    """A copy of the module's source directory and an artifact made from the copy (the test changes them)."""
    src = tmp_path / "model"
    shutil.copytree(bert[0], src)
    spec = compressor.load_model(str(src))
    return src, compress(spec, [{"pass": "nm_prune", "targets": ["encoder.layer.0.intermediate.dense"]}], tmp_path / "art")


def run_cli(capsys, *argv) -> str:
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_a_changed_or_missing_source_directory_is_one_line_and_source_names_another(received, tmp_path, capsys):
    src, art = received
    out = tmp_path / "hf"
    (src / "README.md").write_text((src / "README.md").read_text() + "extra\n")
    (src / "notes.txt").write_text("new")
    err = run_cli(capsys, "export", art, "--hf", out)
    assert f"{src} changed" in err and "notes.txt is new" in err and "README.md differs" in err and "--source" in err
    kept = tmp_path / "kept"
    src.rename(kept)
    err = run_cli(capsys, "export", art, "--hf", out)
    assert "is gone" in err and "--source" in err
    assert not out.exists()
    # the user names the directory: its files are copied (its config.json describes the artifact's model)
    assert cli_main(["export", str(art), "--hf", str(out), "--source", str(kept)]) == 0
    assert (out / "notes.txt").read_text() == "new" and "extra" in (out / "README.md").read_text()
    from_pretrained(transformers.BertModel, out)


def test_a_source_describing_another_model_is_refused(bert, tmp_path, capsys):
    src, art = bert
    other = tmp_path / "other"
    shutil.copytree(src, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    err = run_cli(capsys, "export", art, "--hf", tmp_path / "hf", "--source", other)
    assert "describes another model" in err and "intermediate_size: 96 there, 64 in the artifact" in err
    (other / "config.json").unlink()
    err = run_cli(capsys, "export", art, "--hf", tmp_path / "hf", "--source", other)
    assert "no config.json" in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("where", ["inside_artifact", "inside_source", "is_source"])
def test_an_output_inside_an_input_is_refused(bert, tmp_path, capsys, where):
    src, art = bert
    out = {"inside_artifact": art / "hf", "inside_source": src / "hf", "is_source": src}[where]
    before = sorted(p.name for p in src.iterdir())
    err = run_cli(capsys, "export", art, "--hf", out, "--force")
    assert "--hf" in err and ("lies inside" in err or "is or contains" in err)
    assert sorted(p.name for p in src.iterdir()) == before and not (art / "hf").exists()


def test_option_mistakes_are_one_line(bert, tmp_path, capsys):
    src, art = bert
    assert "choose one" in run_cli(capsys, "export", art, "--hf", tmp_path / "a", "--dense", tmp_path / "b")
    assert "use it with --hf" in run_cli(capsys, "export", art, "--source", src)


def test_gated_layers_are_refused(bert, tmp_path, capsys):
    """dynamic_gate's modules have gate networks of their own: no transformers class holds them."""
    from artifact_tools import copy_artifact, rewrite_metadata  # tests/artifact_tools.py

    art = copy_artifact(bert[1], tmp_path)
    rewrite_metadata(art, lambda m: m.update(replacements=[
        {"module": "encoder.layer.0.intermediate.dense", "kind": "gated_linear", "structural": True,
         "options": {"block": [8, 8], "keep": 0.5, "mode": "global", "rank": 0}}]))
    err = run_cli(capsys, "export", art, "--hf", tmp_path / "hf")
    assert "gated layers (encoder.layer.0.intermediate.dense" in err and not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_the_pretrained_minilm_round_trips(tmp_path):
    """The real sentence-transformers/all-MiniLM-L6-v2 (the test extra's package): 2:4 magnitude masks on
    two layers, exported, loaded back by AutoModel and AutoTokenizer."""
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line on import
        minilm = pytest.importorskip("all_minilm_l6_v2")
        src = Path(minilm.extract_model(str(tmp_path / "models")))
    spec = compressor.load_model(str(src))
    spec.evaluate = compressor.loading.no_metric  # the export is under test, not the held-out metric
    original = {k: v.clone() for k, v in spec.model.state_dict().items()}
    targets = ["encoder.layer.0.attention.output.dense", "encoder.layer.3.intermediate.dense"]
    art = compress(spec, [{"pass": "nm_prune", "targets": targets}], tmp_path / "art")
    out = tmp_path / "hf"
    result = compressor.export_hf(art, out)
    assert {"modules.json", "1_Pooling/config.json", "tokenizer.json", "sentence_bert_config.json"} <= set(result["files"])
    model = from_pretrained(transformers.AutoModel, out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["The weights are half zero.", "A sentence."], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, compressor.load(art)(**batch).last_hidden_state)
    masks = compressor.load_masks(art)
    assert sorted(masks) == sorted(f"{t}.weight" for t in targets)
    stored = load_file(str(out / "model.safetensors"))
    for name, tensor in stored.items():
        want = original[name] * masks[name] if name in masks else original[name]
        assert torch.equal(tensor, want), name
    for name in masks:
        assert bool((stored[name][~masks[name]] == 0).all()) and float((stored[name] == 0).float().mean()) >= 0.5


def test_a_directory_that_does_not_reproduce_the_artifact_is_never_put_in_place(bert, tmp_path, monkeypatch):
    """The written directory is loaded back and run before it is renamed into place: weights that went
    in wrong (here one LayerNorm scale doubled on the way) fail the export and leave nothing."""
    import compressor.loading as loading

    real = loading.conv1d_layout

    def doubled(model, state):
        state = real(model, state)
        return {**state, "embeddings.LayerNorm.weight": state["embeddings.LayerNorm.weight"] * 2}

    monkeypatch.setattr(loading, "conv1d_layout", doubled)
    with pytest.raises(ArtifactError, match="differs from the artifact's model.*nothing was written"):
        compressor.export_hf(bert[1], tmp_path / "hf")
    assert not list(tmp_path.iterdir())


def gpt2_with_tokenizer(path: Path) -> Path:
    """A 2-layer GPT2LMHeadModel directory with a byte-level BPE tokenizer of 300 tokens trained on pydoc."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from compressor.corpus import corpus_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([corpus_text("pydoc")[:100_000]], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                                     bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_the_readme_decoder_recipe_compresses_a_gpt2_directory_that_exports_back(tmp_path):
    """The README's decoder recipe as written, with fewer calibration rows and windows that fit this
    model's 64 positions: SparseGPT through the text task, then --hf back to a GPT2LMHeadModel directory."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    block = re.findall(r"```yaml\n(# gpt2-sparsegpt\.yaml.*?)```", readme, re.S)
    assert len(block) == 1
    recipe = yaml.safe_load(block[0])
    step = recipe["passes"][0]
    assert step["calibration"]["name"] == "text" and step["ignore"] == ["lm_head"]
    step.update(rows=256, calibration={**step["calibration"], "seq_len": 32})
    src = gpt2_with_tokenizer(tmp_path / "gpt2")
    spec = compressor.load_model(str(src))
    result = compressor.Pipeline(parse_recipe(recipe)).run(spec, out=tmp_path / "art", console=QUIET)
    out = tmp_path / "hf"
    assert cli_main(["export", str(tmp_path / "art"), "--hf", str(out)]) == 0
    model = from_pretrained(transformers.GPT2LMHeadModel, out)
    model.config.use_cache = False
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer(["def compress(model):", "Return the value."], padding=False)["input_ids"]
    assert ids == transformers.AutoTokenizer.from_pretrained(src)(["def compress(model):", "Return the value."])["input_ids"]
    x = torch.tensor([ids[0][:5], ids[1][:5]])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, result.model(x).logits)
    stored = load_file(str(out / "model.safetensors"))
    for i in range(2):
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            w = stored[f"transformer.h.{i}.{part}.weight"]
            assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)  # SparseGPT's 50%, as Conv1D (in, out)


def test_an_artifact_without_file_digests_checks_the_recorded_directorys_config(bert, tmp_path, capsys):
    """Artifacts made before the digests were recorded: the recorded directory's config.json must still
    describe the model (the other files cannot be compared)."""
    from artifact_tools import copy_artifact, rewrite_metadata  # tests/artifact_tools.py

    src = tmp_path / "model"
    shutil.copytree(bert[0], src)
    art = copy_artifact(bert[1], tmp_path)

    def older(meta):
        del meta["source"]["files"]
        meta["source"]["directory"] = str(src)

    rewrite_metadata(art, older)
    (src / "README.md").write_text("edited")  # not noticed: nothing recorded to compare with
    assert cli_main(["export", str(art), "--hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "README.md").read_text() == "edited"
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "num_attention_heads": 4}))
    err = run_cli(capsys, "export", art, "--hf", tmp_path / "hf2")
    assert "describes another model" in err and "num_attention_heads: 4 there, 2 in the artifact" in err
