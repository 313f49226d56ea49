"""The package tree reads like the pipeline: only the shared few modules at the top of tumorseg/, one
subpackage per step, and no import circle between modules."""

from pathlib import Path

from tests.e2e.test_dvc_deps import imported_names, module_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"__init__.py", "errors.py", "config.py", "atomic.py", "cli.py", "bundle.py"}
SUBPACKAGES = {"data", "model", "train", "evaluate", "serve", "experiments"}


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_imports():
    """{module: the project modules it imports}, packages' __init__ files left out (they import nothing)."""
    graph = {}
    for path in ROOT.glob("tumorseg/**/*.py"):
        targets = (module_file(name, ROOT) for name in imported_names(path))
        graph[module_name(path)] = {module_name(target) for target in targets
                                    if target and target != path and target.name != "__init__.py"}
    return graph


def test_only_the_shared_modules_sit_at_the_top():
    top = {path.name for path in (ROOT / "tumorseg").glob("*.py")}
    assert top == SHARED
    packages = {path.parent.name for path in (ROOT / "tumorseg").glob("*/__init__.py")}
    assert packages == SUBPACKAGES
    for package in packages:
        docstring = (ROOT / "tumorseg" / package / "__init__.py").read_text()
        assert docstring.startswith('"""') and docstring.count("\n") <= 3  # says in two lines what it holds


def test_no_module_imports_itself_through_others():
    graph = project_imports()

    def reaches(start, goal, seen):
        for module in graph.get(start, ()):
            if module == goal or (module not in seen and (seen.add(module) or reaches(module, goal, seen))):
                return True
        return False

    circles = sorted(module for module in graph if reaches(module, module, set()))
    assert circles == []
