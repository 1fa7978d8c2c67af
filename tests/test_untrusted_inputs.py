"""What a user receives (artifact, recipe) is untrusted, and a run never loses what it reads.

Each test is one case of a catalogue of bad inputs: it ends in one line and exit status 2 (or
a documented behaviour), nothing runs that the input names, and no input file is lost.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import compressor
from compressor import checkpoint as ckptlib
from compressor.cli import main as cli_main
from compressor.errors import ArtifactError, CompressorError, ModelLoadError, RecipeError
from compressor.outputs import check_output, claim_output
from compressor.recipe import load_recipe, parse_recipe
from artifact_tools import PRUNE, copy_artifact, make_builtin_artifact, rewrite_metadata  # tests/artifact_tools.py
from fixture_models import ref

ROOT = Path(__file__).resolve().parents[1]
QUIET = Console(file=io.StringIO())
PAYLOAD = "from pathlib import Path\nPath('{marker}').write_text('ran')\ndef make():\n    raise SystemExit(7)\n"


@pytest.fixture(scope="module")
def builtin_artifact(tmp_path_factory) -> Path:
    return make_builtin_artifact(tmp_path_factory.mktemp("builtin") / "art")


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


# 1. loading an artifact never imports or calls what its metadata names

@pytest.mark.parametrize("ref_of", [lambda d: "os:system", lambda d: f"{d / 'payload.py'}:make", lambda d: "payload:make"])
def test_an_artifact_naming_code_never_runs_it(builtin_artifact, tmp_path, capsys, monkeypatch, ref_of):
    art = copy_artifact(builtin_artifact, tmp_path)
    marker = tmp_path / "ran.txt"
    (tmp_path / "payload.py").write_text(PAYLOAD.format(marker=marker))
    monkeypatch.chdir(tmp_path)  # a payload.py in the loader's working directory
    monkeypatch.syspath_prepend(str(tmp_path))
    rewrite_metadata(art, lambda m: m.update(source={"kind": "factory", "ref": ref_of(tmp_path)}))
    with pytest.raises(ArtifactError, match="never runs code it names"):
        compressor.load(art)
    for argv in (["export", art], ["bench", "model", art, "--sections", "torch"]):
        code, err = run_cli(capsys, *argv)
        assert code == 2 and "never runs code it names" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and "payload" not in sys.modules
    assert not list(art.glob("*.onnx"))


def test_factory_artifact_loads_with_the_callers_code(load_fixture, tmp_path):
    spec = load_fixture("mlp")
    result = compressor.Pipeline(parse_recipe({"version": 1, "passes": [{"pass": "block_prune", "block": [4, 4]}]})).run(
        spec, out=tmp_path / "art", console=QUIET)
    x = spec.example_inputs[0]
    with torch.no_grad():
        for model in (ref("mlp"), lambda: load_fixture("mlp").model, load_fixture("mlp").model):
            assert torch.equal(compressor.load(tmp_path / "art", model=model)(x), result.model(x))


def test_hf_artifact_with_remote_code_or_unknown_type_is_refused(builtin_artifact, tmp_path):
    pytest.importorskip("transformers")
    art = copy_artifact(builtin_artifact, tmp_path)
    rewrite_metadata(art, lambda m: m.update(source={"kind": "hf", "config": {
        "model_type": "evil", "auto_map": {"AutoModel": "payload.Model"}}}))
    with pytest.raises(ModelLoadError, match="not one transformers implements"):
        compressor.load(art)


# 8. sizes in metadata are checked against the tensors before any allocation

def test_metadata_claiming_a_huge_model_is_refused_before_allocation(builtin_artifact, tmp_path):
    import resource

    art = copy_artifact(builtin_artifact, tmp_path)
    rewrite_metadata(art, lambda m: m["source"]["config"].update(hidden=30000))  # 14 GB if allocated
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactError, match="nothing was allocated"):
        compressor.load(art)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500_000  # KiB: well under 14 GB


# replacement records as the pipeline writes them (one per options class), and each malformed field of one:
# the record, the field the one line must name, and what it says
_SWAP = {"module": "rnn", "kind": "sparse_lstm", "options": {"block": [8, 8], "backend": "torch"}}
_NM = {"module": "decoder", "kind": "nm_linear", "options": {"n": 2, "m": 4, "backend": "torch"}}
_GATE = {"module": "rnn", "kind": "gated_lstm", "structural": True, "options": {
    "block": [8, 4], "keep": 0.5, "mode": "global", "rank": 0, "init": "random", "seed": 0, "weights": ["weight_hh_l0"]}}


def _bad(record: dict, **options) -> dict:
    return {**record, "options": {**record["options"], **options}}


BAD_RECORDS = [
    ("rnn", "", "expected {module: str"),
    ({**_SWAP, "code": "os.system"}, "", "unknown field 'code'"),
    ({**_SWAP, "module": 7}, ".module", "expected a module path"),
    ({**_SWAP, "kind": "os.system"}, ".kind", "'os.system' is not one of block_sparse_linear"),
    ({**_SWAP, "structural": True}, ".structural", "does not match kind sparse_lstm"),
    ({k: v for k, v in _GATE.items() if k != "structural"}, ".structural", "does not match kind gated_lstm"),
    ({**_SWAP, "options": [8, 8]}, ".options", "expected a mapping"),
    (_bad(_SWAP, keep=0.5), ".options", "unknown option 'keep' for a sparse_lstm"),
    ({**_SWAP, "options": {"backend": "torch"}}, ".options.block", "missing"),
    (_bad(_SWAP, block=[1 << 30, 1]), ".options.block", "two integers in"),
    (_bad(_SWAP, layout="dense"), ".options.layout", "'auto', 'balanced' or 'bsr'"),
    (_bad(_SWAP, backend="cuda"), ".options.backend", "'auto', 'torch', 'triton', 'native'"),
    (_bad(_NM, n=0), ".options.n", r"an integer in \[1, 64\]"),
    (_bad(_NM, m=65), ".options.m", r"an integer in \[1, 64\]"),
    (_bad(_NM, n=4, m=2), ".options.n", "more than m=2"),
    (_bad(_GATE, keep=0), ".options.keep", r"a number in \(0, 1\]"),
    (_bad(_GATE, mode="col"), ".options.mode", "'global', 'row'"),
    (_bad(_GATE, rank=-1), ".options.rank", "an integer in"),
    (_bad(_GATE, init="zeros"), ".options.init", "'norm', 'random'"),
    (_bad(_GATE, seed=-1), ".options.seed", "a non-negative integer"),
    (_bad(_GATE, weights="all"), ".options.weights", "a list of weight names"),
]


@pytest.mark.parametrize("change,match", [
    *[(lambda m, rec=rec: m.update(replacements=[_SWAP, rec]), rf"damaged metadata: replacements\[1\]{re.escape(field)}: "
       rf".*{says}") for rec, field, says in BAD_RECORDS],
    (lambda m: m.update(replacements={"rnn": _SWAP}), "replacements must be a list"),
    (lambda m: m.update(inputs=[{"shape": [1 << 20, 1 << 20], "dtype": "float32"}]), "inputs"),
    (lambda m: m.update(tied={"head.weight": "nope"}), "tied"),
    (lambda m: m["source"].update(name="../../etc"), "not a built-in model"),
    (lambda m: m["source"].update(config={"hidden": "x"}), "cannot be built"),
])
def test_damaged_metadata_is_one_line(builtin_artifact, tmp_path, capsys, change, match):
    art = copy_artifact(builtin_artifact, tmp_path)
    rewrite_metadata(art, change)
    with pytest.raises(CompressorError, match=match):
        compressor.load(art)
    code, err = run_cli(capsys, "export", art)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_replacement_records_round_trip_as_the_json_artifacts_hold():
    """The typed records are the JSON the pipeline writes (the same strings as before they were typed,
    so older artifacts read the same): built in code, written, read back, equal; and the validator
    takes every record the pipeline writes, with the optional options left out."""
    from compressor.swaps import BlockKernelOptions, GateOptions, NMKernelOptions, Replacement, ReplacementKind
    from compressor.kernels import Backend

    built = [Replacement("rnn", ReplacementKind.SPARSE_LSTM, BlockKernelOptions((8, 8), backend=Backend.TORCH)),
             Replacement("decoder", ReplacementKind.NM_LINEAR, NMKernelOptions(2, 4, Backend.TORCH)),
             Replacement("rnn", ReplacementKind.GATED_LSTM, GateOptions((8, 4), 0.5, "global", 0, "random", 0,
                                                                        ("weight_hh_l0",)))]
    for rec, literal in zip(built, [_SWAP, _NM, _GATE]):
        assert rec.to_json() == literal
        again = Replacement.from_json(json.loads(json.dumps(rec.to_json())), "r")
        assert again == rec and type(again.kind) is ReplacementKind
        assert type(getattr(again.options, "block", ())) is tuple and "Backend" not in repr(rec.to_json())
    # records without the options some producers leave out: read with the defaults, written as they were
    plain = {"module": "fc", "kind": "block_sparse_linear", "options": {"block": [4, 4], "layout": "bsr"}}
    assert Replacement.from_json(plain, "r").to_json() == plain and Replacement.from_json(plain, "r").options.backend is None
    lean = {**_GATE, "options": {k: _GATE["options"][k] for k in ("block", "keep", "mode", "rank")}}
    got = Replacement.from_json(lean, "r").options
    assert (got.init, got.seed, got.weights) == ("random", 0, None)
    # built in code, the same checks apply (one line naming the class and field)
    with pytest.raises(ValueError, match=r"GateOptions\.keep: 2 is invalid"):
        GateOptions((8, 4), 2, "global", 0)
    with pytest.raises(TypeError, match="a nm_linear takes NMKernelOptions"):
        Replacement("fc", ReplacementKind.NM_LINEAR, BlockKernelOptions((4, 4)))


# 2, 6. --out is checked before any work, and --force never takes an input with it

def test_out_holding_the_inputs_is_refused_and_nothing_is_lost(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    recipe = work / "r.yaml"
    recipe.write_text(json.dumps(PRUNE))
    monkeypatch.chdir(work)
    cases = [work, Path("."), Path("..") / work.name, tmp_path]  # the recipe's folder, the working directory, above it
    for out in cases:
        code, err = run_cli(capsys, "--recipe", recipe, "--out", out, "--force")
        assert code == 2 and ("--force would delete" in err or "inside" in err), (out, err)
    assert recipe.is_file() and not list(tmp_path.glob(".*old-*")) and not list(tmp_path.glob(".*tmp-*"))


def test_out_inside_a_model_directory_is_refused(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(ArtifactError, match="lies inside input"):
        check_output(model_dir / "runs" / "a", False, [model_dir])


def test_unwritable_out_fails_before_the_model_loads(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(PRUNE))
    code, err = run_cli(capsys, "--recipe", recipe, "--model", "no-such-model", "--out", blocker / "sub" / "art")
    # the model name is bad too, but the output location is checked first: no model was loaded
    assert code == 2 and "cannot create the folder" in err
    assert blocker.read_text() == "x"


# 4. two runs to the same --out: the second fails at once, a killed run's leftovers are cleaned

def test_a_second_run_to_the_same_out_fails_while_the_first_holds_it(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(PRUNE))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".art.lock").write_text(f"{sleeper.pid}\n")  # a live run holds --out
        code, err = run_cli(capsys, "--recipe", recipe, "--out", tmp_path / "art")
        assert code == 2 and f"another run (pid {sleeper.pid})" in err
        assert not (tmp_path / "art").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_killed_runs_lock_and_temp_folders_are_taken_over(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".art.lock").write_text(dead.stdout)
    (tmp_path / ".art.tmp-abc").mkdir()
    (tmp_path / ".art.tmp-abc" / "model.safetensors").write_bytes(b"half")
    notes: list[str] = []
    with claim_output(tmp_path / "art", notes=notes):
        assert (tmp_path / ".art.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".art.tmp-abc").exists() and not (tmp_path / ".art.lock").exists()
    assert notes and "interrupted run" in notes[0]


# 3, 5. recipes: alias bombs, duplicate keys, huge values, short error messages

BOMB = "version: 1\na: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "passes: [{pass: nm_prune, n: *i}]\n"


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert path.stat().st_size < 600
    with pytest.raises(RecipeError, match="expands to more than"):
        load_recipe(path)


def test_duplicate_keys_are_refused_with_their_path(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("version: 1\npasses:\n  - pass: unstructured_prune\n    sparsity: 0.3\n    sparsity: 0.95\n")
    with pytest.raises(RecipeError, match=r"duplicate key \(lines 4 and 5\)") as info:
        load_recipe(path)
    assert info.value.path == "passes[0].sparsity"


def test_oversized_recipe_and_long_values_give_short_errors(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\npasses: []\n# " + "x" * (2 << 20))
    with pytest.raises(RecipeError, match="larger than"):
        load_recipe(big)
    with pytest.raises(RecipeError) as info:
        parse_recipe({"version": 1, "passes": [{"pass": "unstructured_prune", "sparsity": ["y" * 10**6] * 1000}]})
    assert len(str(info.value)) <= 500


@pytest.mark.parametrize("data,where", [
    ({"version": 1, "seed": 2**70, "passes": [{"pass": "nm_prune"}]}, "seed"),
    ({"version": 1, "passes": [{"pass": "block_prune", "block": [2**40, 4]}]}, "passes[0].block"),
    ({"version": 1, "model": {"inputs": ["0x32:int64"]}, "passes": [{"pass": "nm_prune"}]}, "model.inputs[0]"),
    ({"version": 1, "model": {"inputs": ["100000x100000"]}, "passes": [{"pass": "nm_prune"}]}, "model.inputs[0]"),
])
def test_out_of_range_values_name_their_key(data, where):
    with pytest.raises(RecipeError) as info:
        parse_recipe(data)
    assert info.value.path == where


# 7, 9, 12. loading errors are one line; resume fingerprints the inputs' contents

def test_checkpoint_problems_are_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(PRUNE))
    (tmp_path / "ckpt").mkdir()
    code, err = run_cli(capsys, "--recipe", recipe, "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "a")
    assert code == 2 and "is a directory" in err
    factory = tmp_path / "exits.py"
    factory.write_text("import sys\ndef make():\n    sys.exit(3)\n")
    code, err = run_cli(capsys, "--recipe", recipe, "--model", f"{factory}:make", "--out", tmp_path / "b")
    assert code == 2 and "sys.exit(3)" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_damaged_resume_checkpoint_is_one_line(tmp_path):
    work = tmp_path / ".art.work"
    work.mkdir()
    (work / ckptlib.CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CompressorError, match="not a readable checkpoint"):
        ckptlib.load_checkpoint(work, "x")


def test_resume_fingerprint_covers_input_contents(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    first = ckptlib.fingerprint("recipe", {"checkpoint": str(weights)}, files=[weights])
    weights.write_bytes(b"two")  # same name, new contents
    assert ckptlib.fingerprint("recipe", {"checkpoint": str(weights)}, files=[weights]) != first


def test_task_factory_with_the_wrong_signature_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "badtask.py").write_text("def make():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from compressor.tasks import TaskConfig, build_task

    with pytest.raises(RecipeError, match=r"make\(\) cannot be called as make\(config, spec, teacher\)"):
        build_task(TaskConfig(name="badtask:make"), None, None)


def test_a_model_without_layers_writes_nothing(tmp_path):
    spec = compressor.ModelSpec(torch.nn.Sequential(torch.nn.ReLU()), (torch.randn(2, 3),), {"kind": "factory", "ref": "x"})
    with pytest.raises(CompressorError, match="no linear or recurrent layer"):
        compressor.Pipeline(parse_recipe({"version": 1, "passes": [{"pass": "nm_prune"}]})).run(
            spec, out=tmp_path / "art", console=QUIET)
    assert not (tmp_path / "art").exists() and not list(tmp_path.iterdir())


# 10. an HTML report never overwrites the artifact, nor any file without --force

def test_html_report_refuses_the_artifact_and_existing_files(builtin_artifact, tmp_path, capsys):
    art = copy_artifact(builtin_artifact, tmp_path)
    weights = (art / "model.safetensors").read_bytes()
    code, err = run_cli(capsys, "report", art, "--html", art / "model.safetensors")
    assert code == 2 and "inside the artifact" in err
    assert (art / "model.safetensors").read_bytes() == weights
    page = tmp_path / "page.html"
    page.write_text("mine")
    code, err = run_cli(capsys, "report", art, "--html", page)
    assert code == 2 and "--force" in err and page.read_text() == "mine"
    assert run_cli(capsys, "report", art, "--html", page, "--force")[0] == 0 and "<html" in page.read_text()
