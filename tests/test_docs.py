"""README and docs name only commands and files that exist: every `python -m` module of the project and
every path into the project's own folders."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MODULE = re.compile(r"python -m ((?:tumorseg|stages)(?:\.\w+)+)")
PATH = re.compile(r"(?<![\w./-])((?:tumorseg|stages|benchmarks|recipes|tests|docs)/[\w./-]*\w)")


def mentions(pattern):
    return sorted({(doc.relative_to(REPO).as_posix(), match) for doc in DOCS
                   for match in pattern.findall(doc.read_text())})


@pytest.mark.parametrize("doc, module", mentions(MODULE))
def test_every_python_m_module_exists(doc, module):
    assert importlib.util.find_spec(module) is not None, f"{doc} runs python -m {module}, which does not exist"


@pytest.mark.parametrize("doc, path", mentions(PATH))
def test_every_project_path_exists(doc, path):
    target = REPO / path
    assert target.exists() or "*" in path or target.with_suffix(".py").exists(), f"{doc} names {path}, not here"
