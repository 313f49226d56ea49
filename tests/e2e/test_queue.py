"""Two-fold cross-validation through the DVC experiment queue, then its summary.

Queued experiments run in a temporary copy that holds only the files tracked by git or DVC. The
project here is a copy of the repository without its ignored files, committed, so a successful
queued run shows that the pipeline needs nothing untracked.
"""

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.dvc_helpers import (
    DVC_TEST_MARKS,
    SMALL,
    STAGES,
    dvc,
    git,
    reproduced_project,
    run,
    start_queue,
)
from tumorseg.data.cvind import read_cvind
from tumorseg.evaluate.choices import Choices
from tumorseg.experiments import summarize
from tumorseg.model.load import load_model
from tumorseg.model.probabilities import predict
from tumorseg.serve.readers import read_scan
from tumorseg.serve.segmenter import Segmenter

QUEUE_TIMEOUT_S = 600
POLL_S = 3
UNFINISHED_STATES = ("Queued", "Running")

pytestmark = DVC_TEST_MARKS


def queue_tasks(project):
    """`dvc queue status` as {task name (or id): status}, e.g. {'cronk-alto': 'Success'}.

    Columns are read at the header's offsets: the Created column holds one word or several.
    """
    lines = dvc("queue", "status", cwd=project).splitlines()
    if not lines or "Status" not in lines[0]:
        return {}  # no task at all
    header = lines[0]
    name_at, created_at, status_at = (header.index(column) for column in ("Name", "Created", "Status"))
    tasks = {}
    for line in lines[1:]:
        if not line.strip():
            break
        name = line[name_at:created_at].strip() or line[:name_at].strip()
        tasks[name] = line[status_at:].strip()
    return tasks


def wait_for_queue(project, timeout_s=QUEUE_TIMEOUT_S):
    """Poll `dvc queue status` until no task is queued or running; return the last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = queue_tasks(project)
        if tasks and not any(state in UNFINISHED_STATES for state in tasks.values()):
            return tasks
        if time.monotonic() > deadline:
            dvc("queue", "stop", "--kill", cwd=project)
            raise AssertionError(f"the queue did not finish within {timeout_s} s: {tasks}")
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def cv_project(tmp_path_factory):
    """A reproduced small project whose 2-fold CV ran through the queue; its workers stopped afterwards."""
    project = reproduced_project(tmp_path_factory, "queue", SMALL)
    assert git("status", "--porcelain", cwd=project) == ""  # everything committed before queueing
    queued = dvc("exp", "run", "--queue", "-S", "split.fold=0,1", cwd=project)
    assert queued.count("Queued experiment") == 2, queued
    try:
        start_queue(project, jobs=1)
        wait_for_queue(project)
        yield project
    finally:
        dvc("queue", "stop", "--kill", cwd=project)


def test_queued_folds_succeed_with_metrics(cv_project):
    tasks = queue_tasks(cv_project)
    assert sorted(tasks.values()) == ["Success", "Success"], tasks

    entries = summarize.list_entries(json.loads(dvc("exp", "show", "--json", cwd=cv_project)))
    experiments = [e for e in entries if e["kind"] == "experiment"]
    assert sorted(e["name"] for e in experiments) == sorted(tasks)
    assert all(e["state"] == "success" for e in experiments)
    folds = {e["data"]["params"]["params.yaml"]["data"]["split"]["fold"]: e for e in experiments}
    assert sorted(folds) == [0, 1]
    results = {fold: e["data"]["metrics"]["metrics/eval.json"]["data"] for fold, e in folds.items()}
    assert "metrics/eval_details.json" not in folds[0]["data"]["metrics"]  # the details are no DVC metric
    for fold, e in folds.items():  # a plain output, committed with the experiment
        details = json.loads(run(["git", "show", f"{e['rev']}:metrics/eval_details.json"], cv_project))
        results[fold] |= details
    for metrics in results.values():
        assert 0 <= metrics["dice"] <= 1 and 0 <= metrics["iou"] <= 1
        assert all(f"{name}_dice" in metrics for name in ("meningioma", "glioma", "pituitary"))
    # the two test folds are disjoint and cover every patient and slice once
    patients = SMALL["data"]["synthetic"]["patients"]
    assert results[0]["test_patients"] + results[1]["test_patients"] == patients
    assert results[0]["test_images"] + results[1]["test_images"] == patients * SMALL["data"]["synthetic"]["slices_per_patient"]

    # the queued runs reused the committed baseline's data: only split and what follows ran
    log = dvc("queue", "logs", experiments[0]["name"], cwd=cv_project)
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in log}
    assert ran == {"split", "train", "evaluate", "render_samples"}, log[-3000:]


def test_summarize_the_queued_study(cv_project):
    output = run([sys.executable, "-m", "tumorseg.experiments.summarize", "--out", "cv/plot.png", "--csv", "cv/summary.csv",
                  "--experiments-csv", "cv/folds.csv"], cv_project)
    assert "test Dice and IoU of 2 experiment(s)" in output
    assert "mean and standard deviation (n - 1) across experiments:" in output

    folds = pd.read_csv(cv_project / "cv" / "folds.csv")
    assert list(folds.columns[:3]) == ["name", "rev", "split.fold"]  # the only param that differs
    assert folds["split.fold"].tolist() == [0, 1]
    summary = pd.read_csv(cv_project / "cv" / "summary.csv").set_index("scope")
    assert summary.loc["overall", "n"] == 2
    assert summary.loc["overall", "dice_mean"] == pytest.approx(folds["dice"].mean(), abs=1e-6)
    assert summary.loc["overall", "iou_std"] == pytest.approx(folds["iou"].std(ddof=1), abs=1e-6)
    assert summary.loc["glioma", "dice_mean"] == pytest.approx(folds["glioma_dice"].mean(), abs=1e-6)
    assert (cv_project / "cv" / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_release_the_queued_study(cv_project, tmp_path):
    """The two fold models as one released model folder: the mean of the members, its card, and usable
    alone by predict."""
    names = [e["name"] for e in summarize.list_entries(json.loads(dvc("exp", "show", "--json", cwd=cv_project)))
             if e["kind"] == "experiment"]
    output = run([sys.executable, "-m", "tumorseg.experiments.release", *names, "--out", "released"], cv_project)
    assert "released 2 members to released" in output
    released = cv_project / "released"
    assert sorted(p.name for p in released.iterdir()) == ["MODEL_CARD.md", "choices.json", "model.keras",
                                                          "preprocessing.json", "release.json"]
    summary = json.loads((released / "release.json").read_text())
    assert sorted(m["test_fold"] for m in summary["members"]) == [1, 2]
    assert summary["test_slices"] == SMALL["data"]["synthetic"]["patients"] * SMALL["data"]["synthetic"]["slices_per_patient"]
    assert 0 <= summary["across_folds"]["overall_dice"]["mean"] <= 1 and not summary["genuine_known"]
    assert abs(summary["float16"]["dice_float16"] - summary["float16"]["dice_float32"]) < 0.01
    card = (released / "MODEL_CARD.md").read_text()
    assert "Generated by `python -m tumorseg.experiments.release`" in card and "Genuine slices only" not in card

    # the released model averages the members, as they were trained (float16 storage aside)
    members = []
    for name in names:
        dvc("get", ".", "models/unet/model.keras", "--rev", name, "-o", str(tmp_path / f"{name}.keras"), cwd=cv_project)
        members.append(load_model(tmp_path / f"{name}.keras"))
    images = np.load(cv_project / "data" / "numpy" / "images.npy")[:4]
    together = predict(load_model(released / "model.keras"), images, np.arange(4)).probabilities
    alone = np.mean([predict(member, images, np.arange(4)).probabilities for member in members], axis=0)
    np.testing.assert_allclose(together, alone, atol=2e-3)

    # the folder alone is all predict needs
    raw = cv_project / "data" / "raw" / "1.mat"
    result = Segmenter.load(released)(raw)
    assert result.mask.shape == read_scan(raw).slices[0].shape
    assert result.choices == Choices.load(released / "choices.json")


def test_what_an_ensemble_gains_on_a_queued_nested_study(cv_project):
    """Two models of official test fold 3 (the synthetic source writes cvind.mat), validated on folds 1 and 2
    (split.val_fold): each member and their ensemble scored there, the gain the ensemble's Dice minus the
    members'. Runs after the CV's tests, whose experiments it must not join."""
    for val_fold in (0, 1):
        dvc("exp", "run", "--queue", "-n", f"nest-v{val_fold + 1}", "-S", "split.scheme=cvind", "-S", "split.fold=2",
            "-S", f"split.val_fold={val_fold}", cwd=cv_project)
    start_queue(cv_project, jobs=1)
    tasks = wait_for_queue(cv_project)
    for name in ("nest-v1", "nest-v2"):
        assert tasks[name] == "Success", dvc("queue", "logs", name, cwd=cv_project)[-3000:]
    dvc("get", ".", "data/split.csv", "--rev", "nest-v1", "-o", "nest-v1-split.csv", cwd=cv_project)
    split = pd.read_csv(cv_project / "nest-v1-split.csv")
    folds = read_cvind(cv_project / "data" / "raw" / "cvind.mat")[split["index"].to_numpy() - 1]
    assert set(folds[split["subset"] == "test"]) == {3} and set(folds[split["subset"] == "val"]) == {1}
    assert set(folds[split["subset"] == "train"]) == {2, 4, 5}

    output = run([sys.executable, "-m", "tumorseg.experiments.ensemble_gain", "nest-v2", "nest-v1", "--out",
                  "gain.json"], cv_project)
    summary = json.loads((cv_project / "gain.json").read_text())
    assert [m["val_fold"] for m in summary["members"]] == [1, 2] and summary["test_fold"] == 3
    assert summary["test_slices"] == int((split["subset"] == "test").sum())
    scores = summary["scores"]
    assert sorted(scores) == ["ensemble", "nest-v1", "nest-v2"]
    mean_gain = summary["gain"]["members' mean"]["overall"]["gain"]
    members_mean = (scores["nest-v1"]["overall_dice"] + scores["nest-v2"]["overall_dice"]) / 2
    assert mean_gain == pytest.approx(scores["ensemble"]["overall_dice"] - members_mean, abs=1e-9)
    assert "the ensemble's gain in Dice over" in output and "ms/slice for the ensemble" in output

    other_fold = next(e["name"] for e in summarize.list_entries(json.loads(dvc("exp", "show", "--json", cwd=cv_project)))
                      if e["kind"] == "experiment" and e["data"]["params"]["params.yaml"]["data"]["split"]["fold"] == 0)
    refused = subprocess.run([sys.executable, "-m", "tumorseg.experiments.ensemble_gain", "nest-v1", "nest-v2",
                              "--single", other_fold], cwd=cv_project, capture_output=True, text=True)
    assert refused.returncode == 1 and f"{other_fold} tests on split.fold 0, the members on 2" in refused.stderr
