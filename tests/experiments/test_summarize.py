"""Summary of experiments from a hand-made `dvc exp show --json` (DVC 3 layout)."""

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest

from tumorseg.cli import exit_status
from tumorseg.experiments import summarize

PARAMS = {"seed": 42, "split": {"folds": 3, "fold": None}, "train": {"epochs": 2, "augment": {"hflip": True}}}
CLASS_SCORES = {"meningioma": (0.5, 0.6, 0.7), "glioma": (0.8, 0.9, 1.0), "pituitary": (0.2, 0.3, None)}


def node(rev, name, params, metrics, error=None):
    """One row of `dvc exp show --json`: rev, name, data (params, metrics, ...), error."""
    data = {
        "rev": rev, "timestamp": "2025-01-01T00:00:00",
        "params": {"params.yaml": {"data": params}},
        "metrics": {} if metrics is None else {
            "metrics/eval.json": {"data": metrics},
            "metrics/train.json": {"data": {"dice": 0.1, "epochs": 2}},
        },
        "deps": {}, "outs": {}, "meta": {},
    }
    return {"rev": rev, "name": name, "data": data, "error": error, "experiments": None}


def fold_metrics(i):
    """Overall Dice 0.6, 0.7, 0.8 and IoU 0.4, 0.5, 0.6 for folds 0, 1, 2; pituitary missing in fold 2;
    glioma failures 2, 4, 6 and a CI of Dice +- 0.05."""
    metrics = {"dice": 0.6 + 0.1 * i, "iou": 0.4 + 0.1 * i, "threshold": 0.5, "test_images": 10,
               "failures": 3 * i, "dice_ci_low": 0.55 + 0.1 * i,
               "dice_ci_high": 0.65 + 0.1 * i, "glioma_failures": 2 + 2 * i}
    for name, scores in CLASS_SCORES.items():
        metrics[f"{name}_dice"] = scores[i]
        metrics[f"{name}_iou"] = None if scores[i] is None else scores[i] / 2
        metrics[f"{name}_n"] = 0 if scores[i] is None else 3
    return metrics


def experiment(rev, name, params, metrics, state="success", error=None):
    row = node(rev, name, params, metrics, error)
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    return {"revs": [row], "executor": executor, "name": name}


def with_fold(fold):
    params = copy.deepcopy(PARAMS)
    params["split"]["fold"] = fold
    return params


@pytest.fixture
def exp_show():
    baseline_metrics = fold_metrics(0) | {"dice": 0.1, "iou": 0.05}
    commit = node("a" * 40, "main", PARAMS, baseline_metrics)
    commit["experiments"] = [
        experiment("1" * 40, "fold2", with_fold(2), fold_metrics(2)),
        experiment("2" * 40, "fold0", with_fold(0), fold_metrics(0)),
        experiment("3" * 40, "fold1", with_fold(1), fold_metrics(1), state=None),  # saved, no executor
        experiment("4" * 40, "broken", with_fold(5), baseline_metrics, state="failed",
                   error={"msg": "Experiment run failed", "type": ""}),
        experiment("5" * 40, "waiting", with_fold(4), None, state="queued"),
    ]
    workspace = node("workspace", None, PARAMS, baseline_metrics)
    return [workspace, commit]


def test_entries_and_default_selection(exp_show, capsys):
    entries = summarize.list_entries(exp_show)
    assert [(e["name"], e["kind"], e["state"]) for e in entries] == [
        ("workspace", "workspace", "success"), ("main", "commit", "success"),
        ("fold2", "experiment", "success"), ("fold0", "experiment", "success"),
        ("fold1", "experiment", "success"), ("broken", "experiment", "failed"),
        ("waiting", "experiment", "queued"),
    ]
    chosen = summarize.select_entries(entries)
    assert [e["name"] for e in chosen] == ["fold2", "fold0", "fold1"]
    notes = capsys.readouterr().err
    assert "broken (failed)" in notes and "waiting (queued)" in notes


def test_table_keeps_varying_params_and_eval_metrics(exp_show):
    entries = summarize.select_entries(summarize.list_entries(exp_show))
    table = summarize.experiment_table(entries)
    assert list(table.columns) == [
        "name", "rev", "split.fold", "dice", "iou", "failures",
        "meningioma_dice", "meningioma_iou", "meningioma_failures",
        "glioma_dice", "glioma_iou", "glioma_failures",
        "pituitary_dice", "pituitary_iou", "pituitary_failures", "dice_ci_low", "dice_ci_high"]
    assert table["glioma_failures"].tolist() == [2, 4, 6]
    assert table["dice_ci_high"].tolist() == pytest.approx([0.65, 0.75, 0.85])
    assert math.isnan(table.loc[0, "meningioma_failures"])  # a key evaluate did not write
    assert list(table["name"]) == ["fold0", "fold1", "fold2"]  # ordered by the varying param
    assert list(table["split.fold"]) == [0, 1, 2]
    assert table["dice"].tolist() == pytest.approx([0.6, 0.7, 0.8])
    assert table["glioma_iou"].tolist() == pytest.approx([0.4, 0.45, 0.5])
    assert math.isnan(table.loc[2, "pituitary_dice"])
    assert table.loc[0, "rev"] == "2222222"


def test_summary_mean_and_sample_sd(exp_show):
    entries = summarize.select_entries(summarize.list_entries(exp_show))
    summary = summarize.summary_table(summarize.experiment_table(entries)).set_index("scope")
    assert list(summary.index) == ["overall", "meningioma", "glioma", "pituitary"]
    assert summary.loc["overall", "dice_mean"] == pytest.approx(0.7)
    assert summary.loc["overall", "dice_std"] == pytest.approx(0.1)  # n - 1: sqrt(0.02 / 2)
    assert summary.loc["overall", "iou_mean"] == pytest.approx(0.5)
    assert summary.loc["glioma", "dice_mean"] == pytest.approx(0.9)
    assert summary.loc["overall", "n"] == 3
    # a class without test slices in one fold is left out of that class only
    assert summary.loc["pituitary", "n"] == 2
    assert summary.loc["pituitary", "dice_mean"] == pytest.approx(0.25)
    assert summary.loc["pituitary", "dice_std"] == pytest.approx(np.std([0.2, 0.3], ddof=1))


def test_selection_by_name_and_sha(exp_show):
    entries = summarize.list_entries(exp_show)
    chosen = summarize.select_entries(entries, ["fold1", "2222222", "main"])
    assert [e["name"] for e in chosen] == ["fold1", "fold0", "main"]
    table = summarize.experiment_table(chosen)
    assert list(table["split.fold"]) == [0, 1, None]


@pytest.mark.parametrize("names, message", [
    (["nope"], "no experiment or commit named 'nope'; available: workspace, main, fold2"),
    (["broken"], "experiment 'broken' failed"),
    (["waiting"], "experiment 'waiting' is still queued"),
])
def test_selection_errors(exp_show, names, message):
    with pytest.raises(summarize.SummaryError, match=message):
        summarize.select_entries(summarize.list_entries(exp_show), names)


def test_no_finished_experiment_is_an_error(exp_show):
    exp_show[1]["experiments"] = exp_show[1]["experiments"][3:]
    with pytest.raises(summarize.SummaryError, match="no finished experiment found.*dvc queue start"):
        summarize.select_entries(summarize.list_entries(exp_show))


def test_missing_eval_metrics_is_an_error(exp_show):
    del exp_show[1]["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/eval.json"]
    with pytest.raises(summarize.SummaryError, match="fold2 has no metrics/eval.json"):
        summarize.summarize(exp_show)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "0.7", [0.7], True])
def test_a_metric_that_is_not_a_finite_number_is_an_error(exp_show, bad):
    exp_show[1]["experiments"][0]["revs"][0]["data"]["metrics"]["metrics/eval.json"]["data"]["dice"] = bad
    with pytest.raises(summarize.SummaryError, match="metrics/eval.json of fold2: dice is not a finite number"):
        summarize.summarize(exp_show)


def test_a_malformed_exp_show_is_an_error(exp_show):
    exp_show[1]["experiments"][0] = ["not", "a", "mapping"]
    with pytest.raises(summarize.SummaryError, match="not the output of `dvc exp show --json`"):
        summarize.summarize(exp_show)


def test_command_prints_and_writes(exp_show, tmp_path, capsys):
    source = tmp_path / "exps.json"
    source.write_text(json.dumps(exp_show))
    out, csv, rows = tmp_path / "out" / "cv.png", tmp_path / "out" / "cv.csv", tmp_path / "out" / "rows.csv"
    code = summarize.main(["--json", str(source), "--out", str(out), "--csv", str(csv),
                           "--experiments-csv", str(rows)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test Dice and IoU of 3 experiment(s)" in printed
    assert "overall     Dice 0.7000 ± 0.1000  IoU 0.5000 ± 0.1000  n=3  failures 3.0 ± 3.0" in printed
    assert "glioma      Dice 0.9000" in printed and "failures 4.0 ± 2.0" in printed
    assert "pituitary   Dice 0.2500 ± 0.0707" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    summary = pd.read_csv(csv).set_index("scope")
    assert summary.loc["glioma", "iou_mean"] == pytest.approx(0.45)
    assert pd.read_csv(rows)["split.fold"].tolist() == [0, 1, 2]


def test_command_reports_bad_input(tmp_path, capsys):
    source = tmp_path / "exps.json"
    source.write_text("ERROR: not json")
    assert exit_status("summarize", summarize.main, ["--json", str(source), "--out", str(tmp_path / "cv.png")]) \
        == 1
    assert "is not JSON" in capsys.readouterr().err
    source.write_text(json.dumps({"workspace": {}}))
    assert exit_status("summarize", summarize.main, ["--json", str(source), "--out", str(tmp_path / "cv.png")]) \
        == 1
    assert "expected a list of commits" in capsys.readouterr().err
    assert not (tmp_path / "cv.png").exists()
