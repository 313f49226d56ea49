"""Helpers for the DVC tests: a copy of the repository as its own git repo, with small parameters."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_params

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "mat_to_numpy", "split", "train", "evaluate", "render_samples")
# The marks of every DVC test file. One pytest-xdist worker runs those files in turn (xdist_group): the
# queue and remote tests start from a copy of the project that tests/e2e/test_pipeline.py reproduced.
DVC_TEST_MARKS = [pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to run DVC"),
                  pytest.mark.slow, pytest.mark.xdist_group("dvc-projects")]
# Two-fold cross-validation needs at least one validation patient per class in each training part:
# 30 patients give 15 test and 3 validation patients per fold.
SMALL = {
    "data": {"source": "synthetic", "image_size": 64, "synthetic": {"patients": 30, "slices_per_patient": 3, "image_size": 128}},
    "split": {"folds": 2},
    "model": {"depth": 3, "filters": 4},
    "train": {"epochs": 1, "batch_size": 16},
    "evaluate": {"bootstrap": 50},
    "render": {"per_class": 1},
}
# Outputs of the pipeline: never copied, the copy makes its own.
OUTPUT_DIRS = ("data/", "models/", "metrics/", "plots/")


def run(args, cwd, timeout=None):
    """Run a command with this interpreter's bin/ first on PATH; raise with its output when it fails."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def dvc(*args, cwd, timeout=None):
    return run([sys.executable, "-m", "dvc", *args], cwd, timeout=timeout)


def start_queue(project, jobs=1, timeout=300):
    """`dvc queue start -j jobs`, its output in .dvc/tmp/queue-start.log: the worker daemon it leaves running
    inherits that output, so with a pipe (as `run` captures) the call would wait until the worker ends."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log_path = Path(project) / ".dvc" / "tmp" / "queue-start.log"
    with open(log_path, "w") as log:
        status = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)], cwd=project, env=env,
                                stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    if status:
        raise AssertionError(f"dvc queue start failed:\n{log_path.read_text()[-4000:]}")


def git(*args, cwd):
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd)


def ran_stages(output):
    """The stages a dvc repro / exp run output says it ran."""
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def copy_project(root, overrides=SMALL):
    """Copy the repository's files (as git sees them, outputs left out) to `root` with `overrides`
    merged into params.yaml, and commit them there as a new git repo."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).splitlines()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(OUTPUT_DIRS):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(make_params(overrides).model_dump(), sort_keys=False))
    git("init", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-qm", "small pipeline", cwd=root)
    return root


_reproduced = {}


def reproduced_project(tmp_path_factory, name, overrides=SMALL):
    """A fresh copy of a small project whose `dvc repro` is done and committed with its outputs.

    The repro runs once per set of overrides and pytest session (or not at all when a test kept its
    own, see keep_reproduced); each caller gets its own copy (git history, DVC cache and workspace),
    so tests do not see each other's changes.
    """
    key = repr(overrides)
    if key not in _reproduced:
        template = copy_project(tmp_path_factory.mktemp("reproduced"), overrides)
        dvc("repro", cwd=template)
        git("add", "-A", cwd=template)
        git("commit", "-qm", "baseline run", cwd=template)
        _reproduced[key] = template
    root = tmp_path_factory.mktemp(name) / "repo"
    shutil.copytree(_reproduced[key], root, symlinks=True, ignore=_ignore_dvc_tmp)
    return root


def keep_reproduced(tmp_path_factory, project, overrides=SMALL):
    """Keep a copy of `project`, just reproduced with `overrides` and committed, for reproduced_project."""
    template = tmp_path_factory.mktemp("reproduced") / "repo"
    shutil.copytree(project, template, symlinks=True, ignore=_ignore_dvc_tmp)
    _reproduced.setdefault(repr(overrides), template)


def _ignore_dvc_tmp(folder, names):
    """Leave out .dvc/tmp (locks, state, queue) when copying a project."""
    return ["tmp"] if Path(folder).name == ".dvc" else []
