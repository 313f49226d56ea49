"""The public face: what a user imports from tumorseg, and the console scripts people type."""

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import tumorseg

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_public_names_are_the_defining_modules_own():
    from tumorseg.errors import InputError
    from tumorseg.serve.segmenter import Segmentation, Segmenter

    assert tumorseg.Segmenter is Segmenter and tumorseg.Segmentation is Segmentation
    assert tumorseg.InputError is InputError
    assert set(tumorseg.__all__) <= set(dir(tumorseg))
    with pytest.raises(AttributeError, match="no attribute 'Segmentr'"):
        getattr(tumorseg, "Segmentr")  # a misspelt name


def test_importing_the_package_does_not_load_the_serving_code():
    # the stages import tumorseg: the public API must stay lazy, or every stage would load serve/
    code = "import sys, tumorseg; print(sorted(m for m in sys.modules if m.startswith('tumorseg.')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_console_script_points_at_a_command_of_the_exit_convention(script, monkeypatch, capsys):
    module, function = SCRIPTS[script].split(":")
    command = getattr(importlib.import_module(module), function)
    assert script == f"tumorseg-{module.rsplit('.', 1)[1].replace('_', '-')}"
    monkeypatch.setattr(sys, "argv", [script, "--no-such-option"])
    with pytest.raises(SystemExit) as stop:
        command()
    assert stop.value.code == 2 and capsys.readouterr().err.startswith(f"usage: {script}")


def test_the_installed_recipe_script_lists_the_recipes():
    if shutil.which("tumorseg-recipe") is None:
        pytest.skip("console scripts not installed: pip install -e . (the README's set-up does)")
    found = subprocess.run(["tumorseg-recipe", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert found.returncode == 0 and "cpu" in found.stdout.split()
    usage = subprocess.run(["tumorseg-recipe", "--no-such-option"], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: tumorseg-recipe")
