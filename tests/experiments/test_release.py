"""The release command's checks: only the experiments of one cross-validation become one released model.
(The whole command runs on a queued two-fold study in tests/e2e/test_queue.py.)"""

import pandas as pd
import pytest

from tests.helpers import make_params
from tumorseg.errors import InputError
from tumorseg.experiments.release import Member, check_one_run, experiment_revision, fold_scores


def member(name, fold, digest="abc", **overrides):
    params = make_params({"split.fold": fold, **overrides})
    return Member(name, "0" * 40, None, params, pd.DataFrame(), digest)


def test_one_cross_validation_passes():
    check_one_run([member("f1", 0), member("f2", 1, **{"data.source": "/elsewhere/same-folder"})])


@pytest.mark.parametrize("second, message", [
    (member("f2", 1, **{"train.epochs": 3}), "differ in more than split.fold"),
    (member("f2", 0), r"two members share split.fold \(\[0, 0\]\)"),
    (member("f2", 1, digest="def"), "trained on different data/numpy"),
])
def test_members_of_two_studies_or_folds_are_refused(second, message):
    with pytest.raises(InputError, match=message):
        check_one_run([member("f1", 0), second])


def test_an_unknown_experiment_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a git repository: no experiment, no commit
    with pytest.raises(InputError, match="neither a DVC experiment nor a commit here; list them with dvc exp show"):
        experiment_revision("no-such-experiment")


def test_fold_scores_per_class_and_failures():
    per_image = pd.DataFrame({"class": ["meningioma", "glioma", "glioma", "pituitary"],
                              "dice": [0.9, 0.05, 0.7, 0.8], "dice_native": [0.88, 0.04, 0.69, 0.79],
                              "iou": [0.8, 0.02, 0.55, 0.67]})
    scores = fold_scores(per_image)
    assert scores["overall_dice"] == pytest.approx(0.6125) and scores["overall_failures"] == 1
    assert scores["glioma_dice"] == pytest.approx(0.375) and scores["glioma_n"] == 2
    assert scores["glioma_failures"] == 1 and scores["meningioma_failures"] == 0
