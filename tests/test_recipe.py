"""Recipe validation: every mistake is caught before a model loads, with the path and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compressor.errors import RecipeError
from compressor.recipe import load_recipe, parse_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def base(**pass_fields):
    return {"version": 1, "passes": [{"pass": "block_prune", **pass_fields}]}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.passes
    # the resolved form is itself a valid recipe that resolves to the same thing
    again = parse_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again.to_dict() == recipe.to_dict()


def test_there_are_shipped_recipes():
    assert any(p.name == "lstm-oneshot.yaml" for p in RECIPES)


def test_misspelled_pass_key_names_the_path_and_suggests():
    data = {"version": 1, "passes": [{"pass": "nm_prune"}, {"pass": "block_prune", "blok": [4, 4]}]}
    with pytest.raises(RecipeError) as info:
        parse_recipe(data)
    assert info.value.path == "passes[1].blok"
    assert "did you mean 'block'" in str(info.value)


def test_misspelled_top_level_key():
    with pytest.raises(RecipeError, match="passses.*did you mean 'passes'"):
        parse_recipe({"version": 1, "passses": []})


def test_unknown_pass_suggests_close_match():
    with pytest.raises(RecipeError, match=r"passes\[0\]\.pass.*'blok_prune'.*did you mean 'block_prune'"):
        parse_recipe({"version": 1, "passes": [{"pass": "blok_prune"}]})


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(value):
    with pytest.raises(RecipeError, match=r"passes\[0\]\.sparsity"):
        parse_recipe(base(sparsity=value))


@pytest.mark.parametrize("n,m,where", [(4, 4, "n"), (5, 4, "n"), (0, 4, "n"), (1, 1, "m")])
def test_n_must_be_below_m(n, m, where):
    with pytest.raises(RecipeError) as info:
        parse_recipe({"version": 1, "passes": [{"pass": "nm_prune", "n": n, "m": m}]})
    assert info.value.path == f"passes[0].{where}"


@pytest.mark.parametrize("fields,path", [
    ({"block": [0, 4]}, "passes[0].block"),
    ({"block": [4]}, "passes[0].block"),
    ({"block": "4x4"}, "passes[0].block"),
    ({"score": "max"}, "passes[0].score"),
    ({"balanced": "yes"}, "passes[0].balanced"),
    ({"sparsity": "high"}, "passes[0].sparsity"),
    ({"targets": ["re:("]}, "passes[0].targets[0]"),
])
def test_bad_values_name_their_key(fields, path):
    with pytest.raises(RecipeError) as info:
        recipe = parse_recipe(base(**fields))
        # regexes are compiled when the pipeline plans; check that path too
        from compressor.targeting import compile_pattern

        for i, t in enumerate(recipe.passes[0].config.targets):
            compile_pattern(t, f"passes[0].targets[{i}]")
    assert info.value.path == path


def test_version_and_passes_required():
    with pytest.raises(RecipeError, match="version"):
        parse_recipe({"passes": [{"pass": "nm_prune"}]})
    with pytest.raises(RecipeError, match="version"):
        parse_recipe({"version": 2, "passes": [{"pass": "nm_prune"}]})
    with pytest.raises(RecipeError, match="passes"):
        parse_recipe({"version": 1, "passes": []})


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npasses: [\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("version: 1\npasses:\n  - pass: block_prune\n    sparsty: 0.5\n")
    with pytest.raises(RecipeError, match=r"typo.yaml: passes\[0\]\.sparsty.*did you mean 'sparsity'"):
        load_recipe(typo)


def test_model_section_inputs_are_checked():
    with pytest.raises(RecipeError, match=r"model\.inputs\[0\]"):
        parse_recipe({"version": 1, "model": {"inputs": ["2xfoo"]}, "passes": [{"pass": "nm_prune"}]})
    recipe = parse_recipe({"version": 1, "model": {"inputs": ["2x32:int64"]}, "passes": [{"pass": "nm_prune"}]})
    assert recipe.model.inputs == ("2x32:int64",)


@pytest.mark.parametrize("key", ["targets", "ignore"])
def test_bad_regex_fails_when_the_recipe_loads(key):
    """A 're:' pattern that does not compile is a recipe error, so `compress validate` catches it."""
    with pytest.raises(RecipeError, match="invalid regular expression") as info:
        parse_recipe({"version": 1, "passes": [{"pass": "block_prune", key: ["rnn", "re:(("]}]})
    assert info.value.path == f"passes[0].{key}[1]"
