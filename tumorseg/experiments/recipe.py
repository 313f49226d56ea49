"""Named sets of parameter overrides kept in recipes/NAME.yaml, printed as `dvc exp run` options.

    dvc exp run $(python -m tumorseg.experiments.recipe cpu)      # run the CPU recipe
    python -m tumorseg.experiments.recipe --list                  # the recipes there are

A recipe file maps dotted parameter paths of params.yaml to values:

    model.filters: 16
    train.augment.rotation: 15

Every path must name an existing parameter and every value must be valid
(tumorseg.config), so a typo fails here instead of in a stage.
"""

import argparse
from pathlib import Path

import yaml

from tumorseg.cli import program_name, run
from tumorseg.config import ConfigError, load_params, load_yaml
from tumorseg.errors import ProjectError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


SHELL_PATTERN = "*?["  # characters an unquoted $(...) result is expanded by (pathname expansion)

class RecipeError(ProjectError, ValueError):
    """A recipe that is missing or names parameters params.yaml does not have."""


def available(recipes_dir: str | Path = RECIPES_DIR) -> list[str]:
    return sorted(path.stem for path in Path(recipes_dir).glob("*.yaml"))


def load_recipe(name: str | Path, recipes_dir: str | Path = RECIPES_DIR,
                params_path: str | Path = "params.yaml") -> dict[str, object]:
    """The overrides of recipes/NAME.yaml (or of the recipe file NAME, a path ending in .yaml) as
    {dotted path: value}, checked as applied to params.yaml."""
    path = Path(name) if str(name).endswith(".yaml") else Path(recipes_dir) / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe; choose one of: {', '.join(available(recipes_dir)) or 'none'}.")
    try:
        overrides = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error}); fix the file.") from None
    if not isinstance(overrides, dict):
        raise RecipeError(f"{path}: expected a mapping of parameter paths to values.")
    for key, value in overrides.items():
        text = option_text(value)
        if any(char.isspace() for char in text):
            raise RecipeError(f"{path}: {key} = {value!r} holds a space, which `dvc exp run $(python -m "
                              f"tumorseg.experiments.recipe ...)` would split in two: give it with -S yourself.")
        if any(char in SHELL_PATTERN for char in text):
            raise RecipeError(f"{path}: {key} = {value!r} holds one of {SHELL_PATTERN}, which the shell would expand "
                              "into file names in `dvc exp run $(python -m tumorseg.experiments.recipe ...)`: give "
                              "it with -S yourself, quoted.")
    try:
        load_params(params_path).replaced(overrides)
    except ConfigError as error:
        raise RecipeError(f"{path}: applied to {error}") from None
    return overrides


def option_text(value: object) -> str:
    """A value as a YAML flow scalar, as `-S path=value` takes it."""
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip().removesuffix("...").strip()


def as_options(overrides: dict[str, object]) -> list[str]:
    """`-S path=value` options for `dvc exp run`."""
    options = []
    for key, value in overrides.items():
        options += ["-S", f"{key}={option_text(value)}"]
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("tumorseg.experiments.recipe"), description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="recipe name (a file recipes/NAME.yaml) or a recipe file's path")
    parser.add_argument("--list", action="store_true", help="list the recipes")
    args = parser.parse_args(argv)
    if args.list or not args.name:
        print("\n".join(available()))
        return 0
    print(" ".join(as_options(load_recipe(args.name))))
    return 0


def command() -> None:
    """The console script tumorseg-recipe (pyproject.toml), same as python -m tumorseg.experiments.recipe."""
    run("recipe", main)


if __name__ == "__main__":
    command()
