"""The released model in models/released/: a model folder that loads and segments real slices as its card
says, that predict uses on a fresh clone, and whose card is generated from its release.json."""

import json
import shutil

import numpy as np
import pytest

from tests.helpers import REPO
from tests.serve.test_invariance import genuine_slices
from tumorseg.bundle import CARD_FILE, PREPROCESSING_FILE, RELEASED_FOLDER, Preprocessing
from tumorseg.cli import exit_status
from tumorseg.evaluate.metrics import dice_per_image
from tumorseg.experiments.model_card import render_card
from tumorseg.experiments.release import MAX_RELEASE_BYTES, RELEASE_FILE
from tumorseg.serve.predict import main as predict_main
from tumorseg.serve.segmenter import Segmenter

RELEASED = REPO / RELEASED_FOLDER


@pytest.fixture(scope="module")
def summary():
    return json.loads((RELEASED / RELEASE_FILE).read_text())


def test_the_release_fits_the_repository_and_describes_itself(summary):
    assert (RELEASED / "model.keras").stat().st_size == summary["model_bytes"] <= MAX_RELEASE_BYTES
    preprocessing = Preprocessing.load(RELEASED / PREPROCESSING_FILE)
    assert preprocessing.image_size == summary["image_size"]
    assert list(preprocessing.classes) == summary["classes"] == ["meningioma", "glioma", "pituitary"]
    folds = [member["test_fold"] for member in summary["members"]]  # official folds of the real dev set
    assert len(set(folds)) == len(folds) >= 2 and set(folds) <= {1, 2, 3, 4}
    assert summary["test_slices"] == sum(row["overall_n"] for row in summary["folds"])
    assert summary["official_folds"] and summary["genuine_known"]


def test_the_card_is_generated_from_release_json(summary):
    assert (RELEASED / CARD_FILE).read_text() == render_card(summary)


def test_it_segments_the_genuine_sample_slices_at_their_size(real_sample, summary):
    segmenter = Segmenter.load(RELEASED)
    assert segmenter.size == summary["image_size"]
    slices = genuine_slices(real_sample)
    results = segmenter.batch([found.image for found in slices])
    assert len(results) == len(slices) > 0
    dice = [float(dice_per_image((found.mask > 0)[None], result.mask[None])[0])
            for found, result in zip(slices, results)]
    assert all(result.mask.shape == found.image.shape for found, result in zip(slices, results))
    assert np.mean(dice) > 0.6  # real tumours found, not an empty or a full mask


def test_predict_on_a_fresh_clone_uses_the_released_model(real_sample, tmp_path, monkeypatch, capsys):
    """No models/unet/ (nothing trained), no --model: the released model, and one line that says so."""
    shutil.copytree(RELEASED, tmp_path / RELEASED_FOLDER)
    monkeypatch.chdir(tmp_path)
    scan = next((real_sample / "mat").glob("*.mat"))
    assert exit_status("predict", predict_main, [str(scan), "--out", "out"]) == 0
    err = capsys.readouterr().err
    assert f"no trained model in models/unet: using the released model, {RELEASED_FOLDER}" in err
    assert (tmp_path / "out" / "summary.csv").is_file()
