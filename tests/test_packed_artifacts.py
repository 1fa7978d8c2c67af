"""Packed artifacts (format 2): save -> load is bit-exact for every pattern, masks come back from
the layouts, format-1 artifacts still load, and tampered packed tensors are refused."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import compressor
from artifact_tools import copy_artifact, read_metadata_raw
from fixture_models import load_trusted
from compressor.artifacts import replacements_of, save_artifacts
from compressor.errors import ArtifactError
from compressor.recipe import parse_recipe
from compressor.swaps import densify

QUIET = Console(file=io.StringIO())
GATE_TRAIN = {"steps": 2, "eval_every": 0, "checkpoint_every": 0, "task": {"name": "distill", "batch_size": 4}}
CASES = {
    "unstructured": ("lstm_lm", [{"pass": "unstructured_prune", "sparsity": 0.6}], "bitmask"),
    "block": ("lstm_lm", [{"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5}], "bsr"),
    "balanced_block": ("gru_lm", [{"pass": "block_prune", "targets": ["rnn"], "block": [2, 2], "sparsity": 0.5,
                                   "balanced": True}], "balanced_block"),
    "2:4": ("lstm_lm", [{"pass": "nm_prune", "targets": ["rnn"]}], "nm"),
    "transposable 4:8": ("mlp", [{"pass": "nm_convert", "n": 4, "m": 8, "reconstruct": "none"}], "bitmask"),
    "gated": ("mlp", [{"pass": "dynamic_gate", "block": [8, 4], "latency_repeats": 0, "calibration_batches": 1,
                       "train": GATE_TRAIN}], None),
    "tied": ("tied_lm", [{"pass": "unstructured_prune", "sparsity": 0.6}], "bitmask"),
    "swapped kernels": ("lstm_lm", [
        {"pass": "block_prune", "targets": ["rnn"], "block": [4, 4], "sparsity": 0.5, "balanced": True},
        {"pass": "nm_prune", "targets": ["decoder"]},
        {"pass": "swap_kernels", "force": True, "repeats": 2}], "balanced_block"),
}


def run(load_fixture, fixture, passes, out):
    spec = load_fixture(fixture)
    return spec, compressor.Pipeline(parse_recipe({"version": 1, "passes": passes})).run(spec, out=out, console=QUIET)


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_is_bit_exact(load_fixture, tmp_path, case):
    fixture, passes, layout = CASES[case]
    spec, result = run(load_fixture, fixture, passes, tmp_path / "art")
    loaded = load_trusted(tmp_path / "art")
    # weights: the reference is the in-memory model (kernel modules compared through their dense form)
    want, got = densify(result.model).state_dict(), densify(loaded).state_dict()
    assert set(want) == set(got)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor) and got[name].dtype == tensor.dtype, name
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in result.model.modules()]
    with torch.no_grad():
        assert torch.equal(loaded(*spec.example_inputs), result.model.eval()(*spec.example_inputs))
    masks = compressor.load_masks(tmp_path / "art")
    assert set(masks) == set(result.masks)
    for name, mask in result.masks.items():
        assert torch.equal(masks[name], mask), name
    meta = compressor.read_metadata(tmp_path / "art")
    assert meta["format"] == 2
    if layout is None:  # gated: nothing pruned, every weight and gate stored dense
        assert meta["layouts"] == {} and not result.masks
    else:
        assert layout in {r["layout"] for r in meta["layouts"].values()}
    with safe_open(str(tmp_path / "art" / "model.safetensors"), framework="pt") as fh:
        assert not any(k.startswith("__mask__.") for k in fh.keys())  # masks are implied by the layouts


@pytest.mark.parametrize("case", ["balanced_block", "2:4", "transposable 4:8", "block", "unstructured"])
def test_report_bytes_are_the_bytes_in_the_file(load_fixture, tmp_path, case):
    fixture, passes, _ = CASES[case]
    _, result = run(load_fixture, fixture, passes, tmp_path / "art")
    layouts = compressor.read_metadata(tmp_path / "art")["layouts"]
    with safe_open(str(tmp_path / "art" / "model.safetensors"), framework="pt") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
    for row in result.report.layers:
        if row.name not in layouts:
            continue
        written = sum(t.numel() * t.element_size() for k, t in stored.items() if k.startswith(f"__packed__.{row.name}."))
        assert row.compressed_bytes == written, row.name


def test_tied_weight_is_packed_once(load_fixture, tmp_path):
    _, result = run(load_fixture, *CASES["tied"][:2], tmp_path / "art")
    meta = compressor.read_metadata(tmp_path / "art")
    assert meta["tied"] and all(alias not in meta["layouts"] for alias in meta["tied"])


def test_format_1_artifacts_still_load(load_fixture, tmp_path):
    spec, result = run(load_fixture, *CASES["swapped kernels"][:2], tmp_path / "packed")
    packed = load_trusted(tmp_path / "packed")
    report = compressor.read_report(tmp_path / "packed")
    meta = read_metadata_raw(tmp_path / "packed")
    save_artifacts(tmp_path / "dense", densify(result.model), result.masks, meta["source"], meta["patterns"], "",
                   report, replacements=replacements_of(meta), inputs=meta["inputs"], dense=True)
    raw = load_file(str(tmp_path / "dense" / "model.safetensors"))
    assert read_metadata_raw(tmp_path / "dense")["format"] == 1
    assert {k for k in raw if k.startswith("__mask__.")} == {f"__mask__.{n}" for n in result.masks}
    old = load_trusted(tmp_path / "dense")
    with torch.no_grad():
        assert torch.equal(old(*spec.example_inputs), packed(*spec.example_inputs))
    for name, mask in compressor.load_masks(tmp_path / "dense").items():
        assert torch.equal(mask, result.masks[name])
    assert (tmp_path / "dense" / "model.safetensors").stat().st_size > (tmp_path / "packed" / "model.safetensors").stat().st_size


def tamper(directory, change_tensors=None, change_meta=None):
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["compressor"])
    tensors = load_file(str(path))
    if change_tensors:
        change_tensors(tensors)
    if change_meta:
        change_meta(meta)
    save_file(tensors, str(path), metadata={"compressor": json.dumps(meta)})


def _set(key, fn):
    def change(tensors):
        tensors[key] = fn(tensors[key].clone())
    return change


@pytest.fixture(scope="module")
def block_artifact(tmp_path_factory):
    from compressor.loading import load_model
    from fixture_models import ref

    out = tmp_path_factory.mktemp("packed") / "art"
    passes = [{"pass": "block_prune", "targets": ["rnn.weight_hh_l0", "rnn.weight_hh_l1"], "block": [4, 4],
               "sparsity": 0.5, "balanced": True},
              {"pass": "unstructured_prune", "targets": ["rnn.weight_ih_l0"], "sparsity": 0.5},
              {"pass": "nm_prune", "targets": ["decoder"]}]
    compressor.Pipeline(parse_recipe({"version": 1, "passes": passes})).run(load_model(ref("lstm_lm")), out=out,
                                                                            console=QUIET)
    return out


W = "rnn.weight_hh_l0"
BAD = {
    "col index out of range": (_set(f"__packed__.{W}.col_idx", lambda t: t.fill_(200)), None,
                               rf"__packed__\.{W}\.col_idx: block columns outside"),
    "duplicate block column": (_set(f"__packed__.{W}.col_idx", lambda t: t.fill_(0)), None,
                               rf"__packed__\.{W}\.col_idx: block columns must be strictly ascending"),
    "values too short": (_set(f"__packed__.{W}.values", lambda t: t[:-1]), None, rf"__packed__\.{W}\.values: stored"),
    "nm index bits cut": (_set("__packed__.decoder.weight.idx", lambda t: t[:-1]), None,
                          r"__packed__\.decoder\.weight\.idx: stored"),
    "bitmask count": (_set("__packed__.rnn.weight_ih_l0.bits", lambda t: t ^ 1), None,
                      r"__packed__\.rnn\.weight_ih_l0\.bits: keeps"),
    "unknown version": (None, lambda m: m["layouts"][W].update(version=3),
                        rf"layouts\['{W}'\]: layout version 3 is not supported"),
    "unknown layout": (None, lambda m: m["layouts"][W].update(layout="zip"), rf"layouts\['{W}'\]: expected"),
    "stray packed tensor": (lambda t: t.update({"__packed__.x.values": torch.zeros(2)}), None,
                            r"'__packed__\.x\.values': a packed tensor no layout describes"),
    "huge claimed shape": (None, lambda m: m["layouts"]["rnn.weight_ih_l0"].update(shape=[1 << 20, 1 << 15]),
                           r"rnn\.weight_ih_l0\.bits: stored"),
    "huge padded block": (None, lambda m: m["layouts"][W].update(block=[1 << 16, 1 << 16]),
                          rf"__packed__\.{W}\.col_idx: expected"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_tampered_packed_tensors_are_one_artifact_error(block_artifact, tmp_path, case):
    change_tensors, change_meta, message = BAD[case]
    art = copy_artifact(block_artifact, tmp_path)
    tamper(art, change_tensors, change_meta)
    with pytest.raises(ArtifactError, match=message) as info:
        load_trusted(art)
    assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError):
        compressor.load_masks(art)


def test_export_dense_writes_the_format_1_layout(block_artifact, tmp_path):
    from compressor.cli import main

    out = tmp_path / "dense.safetensors"
    assert main(["export", str(block_artifact), "--dense", str(out)]) == 0
    saved = load_file(str(out))
    loaded = load_trusted(block_artifact).state_dict()
    masks = compressor.load_masks(block_artifact)
    for name, mask in masks.items():
        assert torch.equal(saved[f"__mask__.{name}"], mask)
        assert torch.equal(saved[name], loaded[name]) and not bool((saved[name][~mask] != 0).any())
    assert not any(k.startswith("__packed__.") for k in saved)
    # the file is a format-1 model.safetensors: an artifact holding it loads to the same weights
    art = copy_artifact(block_artifact, tmp_path, "dense_art")
    out.replace(art / "model.safetensors")
    assert read_metadata_raw(art)["format"] == 1
    for name, tensor in load_trusted(art).state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    assert main(["export", str(art), "--dense", str(art / "x.safetensors")]) == 2  # one line: inside the artifact
    assert not (art / "x.safetensors").exists()
