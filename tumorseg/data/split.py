"""Patient-level split: no patient's slices in two subsets, stratified by class.

Patients are grouped by family first: figshare gives a patient's further
scans IDs with a letter suffix (MR051644, MR051644B, MR051644C), and all of
a family's slices go to one subset (see patient_family).

Two modes, both seeded:
- holdout (split.fold is null): patients go to train / val / test by the
  fractions in params, stratified by each patient's tumor class;
- k-fold (split.fold = k): StratifiedGroupKFold over patients; fold k is the
  test set and val is drawn from the remaining patients by split.val.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_file
from tumorseg.errors import ProjectError

SUBSETS = ("train", "val", "test")


class SplitError(ProjectError, ValueError):
    """The patients cannot make the requested split; the message names the setting to change."""


FAMILY_SUFFIX = re.compile(r"(?<=\d)[A-Za-z]+$")


def patient_family(pid: str) -> str:
    """The patient a PID belongs to: the PID without a letter suffix after its digits.

    `MR051644B` and `MR051644C` are further scans of `MR051644`; IDs without
    such a suffix (`100360`, `fold1-glioma`) are their own family.
    """
    return FAMILY_SUFFIX.sub("", str(pid).strip())


def patient_families(pids: np.ndarray | pd.Series) -> np.ndarray:
    """patient_family of each PID, as an array."""
    return np.array([patient_family(pid) for pid in np.asarray(pids)])


def patient_table(pids: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per patient family ("pid" holds the family) with its most frequent label."""
    slices = pd.DataFrame({"pid": patient_families(pids), "label": labels})
    return slices.groupby("pid")["label"].agg(lambda x: x.mode().iloc[0]).reset_index()


def _split_patients(patients, fraction, seed, what):
    """Stratified split of a patient table; the second part holds `fraction` of the patients."""
    n_second = int(np.ceil(fraction * len(patients)))
    n_classes = patients["label"].nunique()
    if n_second < n_classes or len(patients) - n_second < n_classes:
        raise SplitError(
            f"too few patients for the requested split: {len(patients)} patients, {n_classes} classes, "
            f"{what} fraction {fraction} gives {n_second} patients; each subset needs at least one patient "
            "per class. Use more patients (e.g. data.synthetic.patients) or larger split fractions."
        )
    first, second = train_test_split(
        patients, test_size=n_second, stratify=patients["label"], random_state=seed
    )
    return first, second


def assign_subsets(pids: np.ndarray, labels: np.ndarray, val: float = 0.15, test: float = 0.15, folds: int = 5,
                   fold: int | None = None, seed: int = 42) -> np.ndarray:
    """Return an array of subset names (train/val/test), one per slice; a patient family stays together."""
    pids = np.asarray(pids)
    labels = np.asarray(labels)
    for name, value in (("split.val", val), ("split.test", test)):
        if not 0 < value < 1:
            raise SplitError(f"{name} must be a fraction between 0 and 1, got {value}.")
    patients = patient_table(pids, labels)
    if fold is None:
        if val + test >= 1:
            raise SplitError(f"split.val + split.test must be below 1, got {val} + {test}.")
        rest, test_patients = _split_patients(patients, test, seed, "test")
        train_patients, val_patients = _split_patients(rest, val / (1 - test), seed, "val")
    else:
        if not 0 <= fold < folds:
            raise SplitError(f"split.fold must be in 0..{folds - 1} (split.folds = {folds}), got {fold}.")
        if patients["label"].value_counts().min() < folds:
            raise SplitError(
                f"too few patients for {folds}-fold cross-validation: every class needs at least "
                f"{folds} patients, found {patients['label'].value_counts().to_dict()}."
            )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        _, test_index = list(splitter.split(patients, patients["label"], groups=patients["pid"]))[fold]
        test_patients = patients.iloc[test_index]
        rest = patients.drop(patients.index[test_index])
        train_patients, val_patients = _split_patients(rest, val, seed, "val")
    subset_of = {pid: "train" for pid in train_patients["pid"]}
    subset_of.update({pid: "val" for pid in val_patients["pid"]})
    subset_of.update({pid: "test" for pid in test_patients["pid"]})
    return np.array([subset_of[family] for family in patient_families(pids)])


def write_split(ids: np.ndarray, pids: np.ndarray, labels: np.ndarray, subsets: np.ndarray,
                path: str | Path) -> pd.DataFrame:
    table = pd.DataFrame({"index": ids, "pid": pids, "label": labels, "subset": subsets})
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def summary(table: pd.DataFrame, moved: int | None = None) -> str:
    """Slices and patients per subset and class, as a printable table; `moved`: slices that followed
    their family to another official fold (split.scheme cvind)."""
    table = table.assign(cls=table["label"].map(LABEL_NAMES))
    slices = table.pivot_table(index="subset", columns="cls", values="index", aggfunc="count", fill_value=0)
    patients = table.pivot_table(index="subset", columns="cls", values="pid", aggfunc="nunique", fill_value=0)
    order = [s for s in SUBSETS if s in slices.index]
    return (
        "slices per subset and class:\n" + slices.loc[order].to_string()
        + "\n\npatients per subset and class:\n" + patients.loc[order].to_string()
        + ("" if moved is None else f"\n\nslices moved to their family's official fold: {moved}")
    )
