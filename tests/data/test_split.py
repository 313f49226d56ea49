import numpy as np
import pandas as pd
import pytest

from tumorseg.data.arrays import read_split
from tumorseg.data.split import assign_subsets, patient_family, summary, write_split


def dataset(patients=40, slices=5, seed=0):
    rng = np.random.default_rng(seed)
    pids = np.repeat([f"{1000 + p}" for p in range(patients)], slices)
    labels = np.repeat(rng.permutation(np.arange(patients) % 3 + 1), slices)
    return pids, labels


def patients_in(pids, subsets, name):
    return set(pids[subsets == name])


def test_holdout_is_patient_level_and_stratified():
    pids, labels = dataset(patients=60)
    subsets = assign_subsets(pids, labels, val=0.15, test=0.15, seed=1)
    train, val, test = (patients_in(pids, subsets, s) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 60
    assert (len(val), len(test)) == (9, 9)
    for name in ("train", "val", "test"):
        assert set(labels[subsets == name]) == {1, 2, 3}
    counts = pd.crosstab(subsets, labels)
    assert (counts.loc["test"] / counts.loc["test"].sum()).between(0.2, 0.45).all()


def test_seed_changes_the_split_and_reproduces_it():
    pids, labels = dataset()
    first = assign_subsets(pids, labels, seed=1)
    np.testing.assert_array_equal(first, assign_subsets(pids, labels, seed=1))
    assert (first != assign_subsets(pids, labels, seed=2)).any()


def test_folds_cover_every_patient_once_as_test():
    pids, labels = dataset(patients=30)
    tested = []
    for fold in range(5):
        subsets = assign_subsets(pids, labels, folds=5, fold=fold, seed=3)
        train, val, test = (patients_in(pids, subsets, s) for s in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert set(labels[subsets == "test"]) == {1, 2, 3}
        tested.extend(test)
    assert sorted(tested) == sorted(set(pids))


@pytest.mark.parametrize(
    "pid, family",
    [("MR051644", "MR051644"), ("MR051644B", "MR051644"), ("MR051644C", "MR051644"), ("100360", "100360"),
     ("100360AB", "100360"), ("fold1-glioma", "fold1-glioma"), ("B12", "B12"), (" MR7B ", "MR7")],
)
def test_patient_family_drops_a_letter_suffix_after_digits(pid, family):
    assert patient_family(pid) == family


def families_dataset(patients=40, slices=3, seed=0):
    """Patients with further scans under suffixed IDs (MR1000, MR1000B, MR1000C), as in the real data."""
    rng = np.random.default_rng(seed)
    pids, labels = [], []
    for patient, label in enumerate(rng.permutation(np.arange(patients) % 3 + 1)):
        for suffix in ["", "B", "C"][: 1 + patient % 3]:
            pids += [f"MR{1000 + patient}{suffix}"] * slices
            labels += [label] * slices
    return np.array(pids), np.array(labels)


@pytest.mark.parametrize("mode", [dict(), *(dict(folds=5, fold=k) for k in range(5))])
def test_a_patient_family_never_spans_two_subsets(mode):
    pids, labels = families_dataset()
    subsets = assign_subsets(pids, labels, seed=42, **mode)
    families = pd.DataFrame({"family": [pid.rstrip("BC") for pid in pids], "subset": subsets})
    assert (families.groupby("family")["subset"].nunique() == 1).all()
    assert set(subsets) == {"train", "val", "test"}


def test_too_few_patients_is_a_clear_error():
    pids, labels = dataset(patients=6)
    with pytest.raises(ValueError, match="too few patients"):
        assign_subsets(pids, labels)
    with pytest.raises(ValueError, match="too few patients"):
        assign_subsets(pids, labels, folds=5, fold=0)


@pytest.mark.parametrize("kwargs", [dict(val=0.0), dict(test=1.2), dict(val=0.5, test=0.5), dict(fold=5)])
def test_bad_fractions_or_fold(kwargs):
    pids, labels = dataset()
    with pytest.raises(ValueError, match="split"):
        assign_subsets(pids, labels, **kwargs)


def test_csv_round_trip_keeps_pids_as_text(tmp_path):
    pids = np.array(["0012", "0012", "MR051461"])
    write_split(np.array([1, 2, 3]), pids, np.array([1, 1, 2]), np.array(["train", "train", "test"]), tmp_path / "s.csv")
    table = read_split(tmp_path / "s.csv")
    assert list(table["pid"]) == ["0012", "0012", "MR051461"]
    assert list(table.columns) == ["index", "pid", "label", "subset"]
    assert "meningioma" in summary(table)


@pytest.mark.parametrize("pid", ["NA", "null", "None", "#N/A", "NaN"])
def test_pids_that_pandas_reads_as_missing_stay_text(tmp_path, pid):
    pids = np.array([pid, pid, "P2", "P3"])
    labels = np.array([1, 1, 2, 3])
    write_split(np.arange(1, 5), pids, labels, np.array(["train", "train", "val", "test"]), tmp_path / "split.csv")
    split = read_split(tmp_path / "split.csv")
    assert split["pid"].tolist() == [pid, pid, "P2", "P3"]
