"""tumorseg.experiments.offline_cv end to end on synthetic slices, as the GPU run is prepared, run and scored:
pack here, train and predict (as on the other machine: no DVC curves, several folds at once), score with
evaluate's code."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tumorseg.data.synthetic import write_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def run(*args, backend="tensorflow"):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "tumorseg.experiments.offline_cv", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install -r requirements-backends.txt)"))])
def test_pack_train_score(tmp_path, backend):
    raw, work, out = tmp_path / "raw", tmp_path / "work", tmp_path / "out"
    raw.mkdir()
    write_dataset(raw, patients=15, slices_per_patient=2, image_size=64, seed=0)
    run("pack", "--quick", "--source", raw, "--work", work)
    assert sorted(path.name for path in work.iterdir()) == [
        "data.npz", "params.yaml", *(f"split-fold{k}.csv" for k in range(5))]
    split = pd.read_csv(work / "split-fold1.csv")
    assert set(split["subset"]) == {"train", "val", "test"}

    run("train", "--work", work, "--out", out, "--folds", 0, 1, "--parallel", 2, backend=backend)
    summary = json.loads((out / "gpu_cv.json").read_text())
    for fold in ("0", "1"):
        trained = summary["folds"][fold]
        assert trained["returncode"] == 0 and trained["backend"] == backend
        assert trained["train"]["epochs"] == 2 and trained["train_slices_per_s"] > 0
    with np.load(out / "fold1.npz", allow_pickle=False) as stored:
        assert stored["test_probabilities"].dtype == np.uint8
        assert stored["test_probabilities"].shape[1:] == (32, 32)
        np.testing.assert_array_equal(stored["test_ids"], split.loc[split["subset"] == "test", "index"])
    assert "===== fold 1" in (out / "train.log").read_text()

    report = run("score", "--source", raw, "--work", work, "--predictions", out, "--out", tmp_path / "scores")
    assert "mean and standard deviation" in report
    folds = pd.read_csv(tmp_path / "scores" / "folds.csv")
    assert list(folds["split.fold"]) == [0, 1] and folds["dice"].between(0, 1).all()
    for fold in (0, 1):
        metrics = json.loads((tmp_path / "scores" / f"fold{fold}" / "eval_details.json").read_text())
        assert metrics["test_images"] == int((pd.read_csv(work / f"split-fold{fold}.csv")["subset"] == "test").sum())
    assert (tmp_path / "scores" / "summary.png").stat().st_size > 0


def test_the_scorer_takes_each_fold_once_and_refuses_what_train_did_not_write(tmp_path):
    from tumorseg.errors import InputError
    from tumorseg.experiments.offline_cv import prediction_folds, training_summary

    with pytest.raises(InputError, match="no fold<k>.npz"):
        prediction_folds(tmp_path)
    for name in ("fold0.npz", "fold1.npz", "fold3.npz"):
        (tmp_path / name).write_bytes(b"")
    assert prediction_folds(tmp_path) == [0, 1, 3]
    for stray in ("fold00.npz", "foldx.npz", "fold-1.npz"):
        (tmp_path / stray).write_bytes(b"")
        with pytest.raises(InputError, match=f"{stray} is not named fold<k>.npz"):
            prediction_folds(tmp_path)
        (tmp_path / stray).unlink()
    assert training_summary(tmp_path / "gpu_cv.json") == {}
    (tmp_path / "gpu_cv.json").write_text('{"folds": {"0": {"train_s": 60, "train": {"val_dice": 0.7}}}}')
    assert training_summary(tmp_path / "gpu_cv.json") == {"0": {"train_s": 60.0, "val_dice": 0.7}}
    for bad in ("{not json", '["a list"]', '{"folds": {"0": {"train_s": "soon"}}}', '{"folds": {"0": {"train_s": -5}}}',
                '{"folds": {"0": {"train_s": Infinity}}}'):
        (tmp_path / "gpu_cv.json").write_text(bad)
        with pytest.raises(InputError, match="gpu_cv.json: "):
            training_summary(tmp_path / "gpu_cv.json")

