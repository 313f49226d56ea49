"""Share a run through a DVC remote (a local folder): push, clone, pull, and nothing left to reproduce."""

import json

from tests.dvc_helpers import (
    DVC_TEST_MARKS,
    SMALL,
    dvc,
    git,
    ran_stages,
    reproduced_project,
)

# Outputs kept in the DVC cache: they travel through the remote, not through git.
CACHED_OUTPUTS = ("data/raw/1.mat", "data/numpy/images.npy", "data/split.csv", "models/unet/model.keras")

pytestmark = DVC_TEST_MARKS


def workspace_metrics(shown):
    """The workspace's entry of `dvc metrics show --json` (keyed "" in DVC 3, "workspace" before)."""
    entry = shown.get("", shown.get("workspace"))
    assert entry is not None, f"no workspace entry in `dvc metrics show --json`: {shown}"
    return entry["data"]


def test_push_clone_pull_is_up_to_date(tmp_path_factory, tmp_path):
    project = reproduced_project(tmp_path_factory, "remote", SMALL)
    storage = tmp_path / "storage"
    dvc("remote", "add", "-d", "local", str(storage), cwd=project)
    git("add", ".dvc/config", cwd=project)
    git("commit", "-qm", "default remote", cwd=project)
    pushed = dvc("push", cwd=project)
    assert "pushed" in pushed, pushed
    assert any(path.is_file() for path in storage.rglob("*"))

    clone = tmp_path / "clone"
    git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not any((clone / path).exists() for path in CACHED_OUTPUTS)  # git alone does not bring them
    assert (clone / "metrics" / "eval.json").is_file()  # cache: false outputs are committed to git

    dvc("pull", cwd=clone)
    for path in CACHED_OUTPUTS:
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path

    output = dvc("repro", cwd=clone)
    assert ran_stages(output) == set(), output
    assert "Data and pipelines are up to date" in output
    assert "Data and pipelines are up to date" in dvc("status", cwd=clone)

    original = json.loads(dvc("metrics", "show", "--json", cwd=project))
    cloned = json.loads(dvc("metrics", "show", "--json", cwd=clone))
    eval_metrics = workspace_metrics(cloned)["metrics/eval.json"]["data"]
    assert 0 <= eval_metrics["dice"] <= 1 and "glioma_iou" in eval_metrics
    assert cloned == original
