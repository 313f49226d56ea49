"""The nested study's checks and the ensemble's gain against hand-computed differences. (The whole command
runs on a queued nested study in tests/e2e/test_queue.py.)"""

import numpy as np
import pandas as pd
import pytest

from tests.helpers import make_params
from tumorseg.errors import InputError
from tumorseg.experiments.ensemble_gain import check_nested, gains, report
from tumorseg.experiments.release import Member


def member(tmp_path, name, val_fold, fold=3, digest="abc", choices=True, **overrides):
    folder = tmp_path / name
    folder.mkdir()
    if choices:
        (folder / "choices.json").write_text("{}")
    params = make_params({"split.scheme": "cvind", "split.fold": fold, "split.val_fold": val_fold, **overrides})
    return Member(name, "0" * 40, folder, params, pd.DataFrame(), digest)


def test_a_nested_study_and_a_single_model_of_its_test_fold_pass(tmp_path):
    single = member(tmp_path, "all", None)
    check_nested([member(tmp_path, "v1", 0), member(tmp_path, "v2", 1)], single)


@pytest.mark.parametrize("second, single, message", [
    (dict(name="v2", val_fold=None), None, "each with split.val_fold set"),
    (dict(name="v2", val_fold=0), None, r"two members share split.val_fold \(\[0, 0\]\)"),
    (dict(name="v2", val_fold=1, fold=2), None, "differ in more than split.val_fold"),
    (dict(name="v2", val_fold=1, choices=False), None, "v2: no choices.json in its model folder"),
    (dict(name="v2", val_fold=1), dict(name="all", val_fold=None, fold=2), "all tests on split.fold 2"),
    (dict(name="v2", val_fold=1), dict(name="all", val_fold=None, digest="def"), "trained on different data"),
])
def test_what_is_not_one_nested_study_is_refused(tmp_path, second, single, message):
    with pytest.raises(InputError, match=message):
        check_nested([member(tmp_path, "v1", 0), member(tmp_path, **second)],
                     member(tmp_path, **single) if single else None)


def test_gains_are_the_mean_differences_per_class_with_patient_intervals():
    ensemble = pd.DataFrame({"pid": ["a", "a", "b", "c"], "class": ["glioma", "glioma", "pituitary", "glioma"],
                             "genuine": [True, False, True, True], "dice": [0.8, 0.6, 0.9, 0.5]})
    members = {"m1": ensemble.assign(dice=[0.7, 0.6, 0.7, 0.5]), "m2": ensemble.assign(dice=[0.5, 0.4, 0.9, 0.3])}
    result = gains(ensemble, members, seed=0)
    assert result["m1"]["overall"]["gain"] == pytest.approx((0.1 + 0 + 0.2 + 0) / 4)
    assert result["m2"]["glioma"]["gain"] == pytest.approx((0.3 + 0.2 + 0.2) / 3)
    assert result["m2"]["genuine_glioma"]["gain"] == pytest.approx((0.3 + 0.2) / 2)
    mean = result["members' mean"]
    assert mean["overall"]["gain"] == pytest.approx(np.mean([0.2, 0.1, 0.1, 0.1]))
    assert mean["pituitary"] == {"gain": pytest.approx(0.1), "ci_low": pytest.approx(0.1),
                                 "ci_high": pytest.approx(0.1), "n": 1}
    for rows in result.values():
        for row in rows.values():
            assert row["ci_low"] <= row["gain"] + 1e-12 and row["gain"] <= row["ci_high"] + 1e-12
    assert result["m1"]["genuine_overall"]["n"] == 3
    assert "meningioma" not in result["m1"]  # none on this test fold


def test_the_report_names_every_model_and_the_gain():
    scores = {f"{scope}_{key}": value for scope in ("overall", "meningioma", "glioma", "pituitary")
              for key, value in (("dice", 0.75), ("failures", 2))}
    row = {"gain": 0.012, "ci_low": 0.004, "ci_high": 0.02, "n": 10}
    rows = {scope: row for scope in ("overall", "glioma", "pituitary")}
    summary = {"test_fold": 4, "test_slices": 10, "test_patients": 3, "genuine_known": False,
               "scores": {"ensemble": scores, "v1": scores, "all": scores}, "gain": {"members' mean": rows},
               "single": {"experiment": "all"}, "gain_over_single": rows,
               "predict_seconds_per_slice": {"member": 0.017, "ensemble": 0.046}}
    text = report(summary)
    assert "test fold 4: 10 slices, 3 patients" in text
    assert "ensemble" in text and "v1" in text and "all" in text and "genuine_" not in text
    assert "+0.0120 [+0.0040, +0.0200]" in text and "no slices" in text
    assert "17 ms/slice for one member, 46 ms/slice for the ensemble" in text
