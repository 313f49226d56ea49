"""Every tracked text file (README, docs, code, scripts, recipes) names only commands, files and names that
exist: every `python -m` module of the project, every path into the project's own folders, and every
dotted name tumorseg.<module>[.<name>]. A part in capitals (recipes/NAME.yaml, stages.NAME) is a placeholder."""

import ast
import importlib.util
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg"}
TEXTS = [REPO / name for name in subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                                  check=True).stdout.splitlines()
         if Path(name).suffix in TEXT_SUFFIXES and (REPO / name).is_file()]
MODULE = re.compile(r"python -m ((?:tumorseg|stages)(?:\.\w+)+)")
PATH = re.compile(r"(?<![\w./-])((?:tumorseg|stages|benchmarks|recipes|tests|docs)/[\w./-]*\w)")
DOTTED = re.compile(r"(?<![\w./-])(tumorseg(?:\.\w+)+)")


def placeholder(mention: str) -> bool:
    return any(part.isupper() for part in re.split(r"[./]", mention))


def mentions(pattern):
    found = sorted({(text.relative_to(REPO).as_posix(), match) for text in TEXTS
                    for match in pattern.findall(text.read_text(errors="replace")) if not placeholder(match)})
    assert found, f"no mention of {pattern.pattern} found: the search itself is broken"
    return found


@cache
def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
                if isinstance(target, ast.Name) and target.id == "PUBLIC" and isinstance(node.value, ast.Dict):
                    names.update(key.value for key in node.value.keys)  # tumorseg's lazily imported API
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def module_path(name: str) -> Path | None:
    """The source file of a project module or package name, or None."""
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("text, module", mentions(MODULE))
def test_every_python_m_module_exists(text, module):
    assert importlib.util.find_spec(module) is not None, f"{text} runs python -m {module}, which does not exist"


@pytest.mark.parametrize("text, path", mentions(PATH))
def test_every_project_path_exists(text, path):
    target = REPO / path
    assert target.exists() or "*" in path or target.with_suffix(".py").exists(), f"{text} names {path}, not here"


@pytest.mark.parametrize("text, name", mentions(DOTTED))
def test_every_dotted_name_exists(text, name):
    parts = name.split(".")
    for end in range(len(parts), 0, -1):  # the longest prefix that is a module
        path = module_path(".".join(parts[:end]))
        if path is not None:
            break
    rest = parts[end:]
    assert not rest or rest[0] in top_level_names(path) or module_path(".".join(parts[:end + 1])), \
        f"{text} names {name}: {'.'.join(parts[:end])} has no {rest[0]}"


README = REPO / "README.md"
SETUP = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt"
OFFLINE_RUN = "dvc exp run -n demo -S data.source=synthetic"


def test_the_readme_first_screen_has_what_a_first_visit_needs():
    first_screen = "\n".join(README.read_text().splitlines()[:45])
    assert SETUP in first_screen, "the set-up command is not in the README's first 45 lines"
    assert OFFLINE_RUN in first_screen, "the offline run is not in the README's first 45 lines"
    assert first_screen.index(SETUP) < first_screen.index(OFFLINE_RUN), "set up first, then the offline run"
    images = re.findall(r"!\[[^\]]*\]\((docs/images/[^)\s]+)\)", first_screen)
    assert images, "no picture (![...](docs/images/...)) in the README's first 45 lines"
    assert all((REPO / image).is_file() for image in images), f"a picture of the first screen is missing: {images}"
    assert "](docs/results.md" in first_screen, "no link to docs/results.md in the README's first 45 lines"
    assert "tumorseg-predict" in first_screen and "models/released/" in first_screen, \
        "the README's first 45 lines do not show predict with the released model"


def command_lines(script: str) -> list[str]:
    """The commands of a shell script or block: comments and blank lines left out, trailing comments cut."""
    lines = (line.split(" #")[0].strip() for line in script.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_test_command_is_what_ci_runs():
    ci = command_lines((REPO / ".ci" / "run").read_text())
    assert "pytest" in ci, ".ci/run no longer runs pytest"
    tests_section = README.read_text().split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", tests_section, re.S)
    assert block, "the README's Tests section has no bash block"
    assert command_lines(block.group(1))[0] == "pytest", "the README's first test command is not what CI runs"
