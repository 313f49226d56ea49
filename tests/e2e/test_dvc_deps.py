"""dvc.yaml's deps cannot drift from the code: every project module a stage imports is one of its deps.

A stage whose code changed but is missing from its deps would be skipped by `dvc repro`. The import
closure is computed with ast from the stage's module (imports anywhere in a file count, lazy ones too;
a package's __init__.py runs on import, so it counts as well).
"""

import ast
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tumorseg", "stages")


def module_file(name, root):
    """The file of a project module name (e.g. tumorseg.train.loop), or None for anything else."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = root / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path):
    """Module names imported anywhere in a file (for `from a import b`, both a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def with_packages(name):
    """A module name and the packages above it, whose __init__.py runs first."""
    parts = name.split(".")
    return [".".join(parts[: end]) for end in range(1, len(parts) + 1)]


def import_closure(module, root):
    """Files of every project module that importing `module` runs, relative to root."""
    seen, todo = set(), list(with_packages(module))
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            todo.extend(with_packages(name))
    return {path.relative_to(root).as_posix() for path in seen}


def missing_deps(dvc_yaml, root):
    """{stage: sorted project files its command imports that its deps do not list}."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        command = stage["cmd"].split()
        assert command[:3] == ["python", "-m", command[2]], f"stage {name}: expected `python -m MODULE`"
        deps = {str(dep) for dep in stage.get("deps", [])}
        absent = sorted(import_closure(command[2], root) - deps)
        if absent:
            missing[name] = absent
    return missing


def test_every_stage_lists_the_project_modules_it_imports():
    assert missing_deps(ROOT / "dvc.yaml", ROOT) == {}


def test_the_closure_follows_imports_through_modules_and_packages():
    closure = import_closure("stages.train", ROOT)
    assert {"stages/__init__.py", "stages/train.py", "tumorseg/__init__.py", "tumorseg/train/loop.py"} <= closure
    assert "tumorseg/model/unet.py" in closure  # imported by tumorseg/train/loop.py, not by the stage script
    assert "tumorseg/data/sources.py" not in closure


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_removed_dep_is_reported(tmp_path, stage):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"][stage]["deps"].remove("tumorseg/model/losses.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    assert missing_deps(tmp_path / "dvc.yaml", tmp_path) == {stage: ["tumorseg/model/losses.py"]}
