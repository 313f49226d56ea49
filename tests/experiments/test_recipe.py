"""Recipes: overrides checked against params.yaml and printed as dvc exp run options."""

import pytest
import yaml

from tumorseg.cli import exit_status
from tumorseg.experiments.recipe import (
    RECIPES_DIR,
    RecipeError,
    as_options,
    available,
    load_recipe,
    main,
)


def test_every_shipped_recipe_names_real_parameters():
    assert {"cpu", "cpu16", "reference"} <= set(available())
    for name in available():
        assert load_recipe(name, params_path="params.yaml")


def test_options_are_yaml_values_that_read_back(tmp_path):
    overrides = {"model.filters": 16, "train.lr_max": 0.003, "train.monitor": "val_dice", "train.augment.hflip": True}
    options = as_options(overrides)
    assert options[::2] == ["-S"] * 4
    assert options[1::2] == ["model.filters=16", "train.lr_max=0.003", "train.monitor=val_dice",
                             "train.augment.hflip=true"]
    for option, (key, value) in zip(options[1::2], overrides.items()):
        assert yaml.safe_load(option.split("=", 1)[1]) == value


def test_recipe_files_by_name_or_path_and_named_errors(tmp_path):
    (tmp_path / "typo.yaml").write_text("train.augment.rotaton: 10\n")
    with pytest.raises(RecipeError, match="unknown key train.augment.rotaton: did you mean train.augment.rotation"):
        load_recipe("typo", tmp_path, "params.yaml")
    (tmp_path / "zoomed.yaml").write_text("train.augment.zoom: 3.0\n")
    with pytest.raises(RecipeError, match="train.augment.zoom = 3.0"):
        load_recipe("zoomed", tmp_path, "params.yaml")
    with pytest.raises(RecipeError, match="no such recipe; choose one of: typo"):
        load_recipe("gpu", tmp_path, "params.yaml")
    (tmp_path / "mine.yaml").write_text("model.filters: 8\n")
    assert load_recipe(str(tmp_path / "mine.yaml"), params_path="params.yaml") == {"model.filters": 8}


def test_command_prints_the_options(capsys):
    assert main(["cpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == as_options(load_recipe("cpu"))
    assert exit_status("recipe", main, ["no-such-recipe"]) == 1
    assert "no such recipe" in capsys.readouterr().err
    assert RECIPES_DIR.name == "recipes"


@pytest.mark.parametrize("value", ["/tmp/*", "/data/slice?.mat", "/data/[ab]"])
def test_a_recipe_value_the_shell_would_expand_is_refused(tmp_path, value):
    (tmp_path / "glob.yaml").write_text(f'data.source: "{value}"\n')
    with pytest.raises(RecipeError, match=r"holds one of \*\?\[, which the shell would expand"):
        load_recipe(str(tmp_path / "glob.yaml"))


def test_a_recipe_value_with_a_space_is_refused(tmp_path):
    (tmp_path / "spaced.yaml").write_text('data.source: "/mnt/my data"\n')
    with pytest.raises(RecipeError, match="holds a space"):
        load_recipe(str(tmp_path / "spaced.yaml"))
    (tmp_path / "twice.yaml").write_text("train.epochs: 3\ntrain.epochs: 4\n")
    with pytest.raises(RecipeError, match="given twice"):
        load_recipe(str(tmp_path / "twice.yaml"))
