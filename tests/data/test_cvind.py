"""The official folds: cvind.mat in both MATLAB formats, the family move, the split and its errors."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.io import savemat

from tumorseg.config import ConfigError, load_params
from tumorseg.data.cvind import (
    CvindError,
    assign_official,
    read_cvind,
    unite_families,
    write_cvind,
)
from tumorseg.data.split import patient_families
from tumorseg.data.synthetic import write_dataset

FOLDS_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "figshare-folds"
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_v73_round_trip_reads_the_folds(tmp_path):
    folds = np.arange(3064) % 5 + 1
    write_cvind(tmp_path / "cvind.mat", folds)
    np.testing.assert_array_equal(read_cvind(tmp_path / "cvind.mat"), folds)


@pytest.mark.parametrize("shape", [(1, 10), (10, 1)])
def test_v5_file_reads_either_orientation(tmp_path, shape):
    folds = (np.arange(10) % 5 + 1).astype(float).reshape(shape)
    savemat(tmp_path / "cvind.mat", {"cvind": folds})
    np.testing.assert_array_equal(read_cvind(tmp_path / "cvind.mat"), np.arange(10) % 5 + 1)


@pytest.mark.skipif(not FOLDS_DIR.is_dir(), reason="the real dev set ../shared/data/figshare-folds is absent")
def test_the_official_file_gives_the_manifest_folds():
    import pandas as pd

    folds = read_cvind(FOLDS_DIR / "mat" / "cvind.mat")
    assert folds.shape == (3064,)
    manifest = pd.read_csv(FOLDS_DIR / "manifest.csv")
    np.testing.assert_array_equal(folds[manifest["index"] - 1], manifest["fold"])


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(CvindError, match=r"cvind.mat: not found.*split.scheme=random"):
        read_cvind(tmp_path / "cvind.mat")


def test_wrong_shape_is_refused(tmp_path):
    with h5py.File(tmp_path / "cvind.mat", "w") as f:
        f["cvind"] = np.ones((3, 4))
    with pytest.raises(CvindError, match=r"shape 1x3064 or 3064x1, found float64 \(3, 4\)"):
        read_cvind(tmp_path / "cvind.mat")


@pytest.mark.parametrize("bad", [0, 6, 2.5, np.nan])
def test_values_outside_one_to_five_are_refused(tmp_path, bad):
    folds = np.ones(8)
    folds[3] = bad
    write_cvind(tmp_path / "cvind.mat", folds)
    with pytest.raises(CvindError, match=r"whole numbers 1..5; the entry at index 4 is not \(1 such entries\)"):
        read_cvind(tmp_path / "cvind.mat")


def test_garbage_is_refused(tmp_path):
    (tmp_path / "cvind.mat").write_bytes(b"not a mat file" * 100)
    with pytest.raises(CvindError, match="not a MATLAB v5 or v7.3 file"):
        read_cvind(tmp_path / "cvind.mat")


def test_truncated_file_is_refused(tmp_path):
    write_cvind(tmp_path / "full.mat", np.ones(3064))
    (tmp_path / "cvind.mat").write_bytes((tmp_path / "full.mat").read_bytes()[:900])
    with pytest.raises(CvindError, match="unreadable"):
        read_cvind(tmp_path / "cvind.mat")


def test_family_moves_whole_to_the_fold_holding_most_of_it():
    families = np.array(["MR1", "MR1", "MR1", "MR2", "MR2", "MR3", "MR3"])
    folds = np.array([2, 2, 4, 1, 1, 3, 5])  # MR1: 2 of 3 in fold 2; MR3: a tie, the lower fold
    united, moved = unite_families(families, folds)
    np.testing.assert_array_equal(united, [2, 2, 2, 1, 1, 3, 3])
    assert moved == 2


def toy_dataset(patients_per_class=10, slices=4):
    """Patients of three classes, official folds in turn; patient 0 of each class has a further scan 'B'
    placed in another fold."""
    pids, labels, folds = [], [], []
    for label in (1, 2, 3):
        for p in range(patients_per_class):
            for k in range(slices):
                pids.append(f"MR{label}{p:02d}")
                labels.append(label)
                folds.append(p % 5 + 1)
        pids += [f"MR{label}00B"]
        labels += [label]
        folds += [3]
    ids = np.arange(1, len(pids) + 1)
    return np.array(pids), np.array(labels), ids, np.array(folds)


def test_official_split_tests_on_fold_k_plus_one_and_keeps_families_whole():
    pids, labels, ids, cvind = toy_dataset()
    families = patient_families(pids)
    subsets, moved = assign_official(pids, labels, ids, cvind, fold=2, val=0.2, seed=0, families=families)
    assert moved == 3  # the three 'B' scans join their family in fold 1
    test = subsets == "test"
    assert set(cvind[test]) == {3}
    assert not any(p.endswith("00B") for p in pids[test])
    for family in set(families):
        assert len(set(subsets[families == family])) == 1
    for name in ("train", "val", "test"):
        assert set(labels[subsets == name]) == {1, 2, 3}
    val_share = [np.mean(subsets[(labels == c) & ~test] == "val") for c in (1, 2, 3)]
    assert all(0.1 <= share <= 0.2 for share in val_share)
    again, _ = assign_official(pids, labels, ids, cvind, fold=2, val=0.2, seed=0, families=families)
    np.testing.assert_array_equal(subsets, again)


def test_a_validation_fold_is_validation_whole_and_the_other_folds_train():
    pids, labels, ids, cvind = toy_dataset()
    families = patient_families(pids)
    subsets, _ = assign_official(pids, labels, ids, cvind, fold=3, val=0.15, seed=0, families=families,
                                 val_fold=1)
    folds, _ = unite_families(families, cvind)
    np.testing.assert_array_equal(subsets == "test", folds == 4)
    np.testing.assert_array_equal(subsets == "val", folds == 2)
    assert set(folds[subsets == "train"]) == {1, 3, 5}
    for family in set(families):
        assert len(set(subsets[families == family])) == 1


def test_an_empty_validation_fold_names_the_folds_present():
    pids, labels, ids, cvind = toy_dataset()
    cvind = np.where(cvind == 5, 4, cvind)
    with pytest.raises(CvindError, match=r"official fold 5 \(split.val_fold=4\) has no slices in data/raw; "
                                         r"folds present: 1, 2, 3, 4: set split.val_fold to one of 0, 1, 2, 3"):
        assign_official(pids, labels, ids, cvind, fold=0, val=0.15, seed=0, families=patient_families(pids),
                        val_fold=4)


def test_large_groups_stay_out_of_validation():
    pids, labels, ids, cvind = toy_dataset()
    big = 30  # a PNG-rebuilt group of glioma slices in official fold 1
    pids = np.concatenate([pids, ["fold1-glioma"] * big])
    labels = np.concatenate([labels, [2] * big])
    cvind = np.concatenate([cvind, [1] * big])
    ids = np.arange(1, len(pids) + 1)
    subsets, _ = assign_official(pids, labels, ids, cvind, fold=4, val=0.15, seed=0,
                                 families=patient_families(pids))
    glioma_val = (labels == 2) & (subsets == "val")
    assert "fold1-glioma" not in set(pids[glioma_val])
    assert 0 < glioma_val.sum() <= 0.15 * ((labels == 2) & (subsets != "test")).sum()


def test_empty_test_fold_names_the_folds_present():
    pids, labels, ids, cvind = toy_dataset()
    cvind = np.where(cvind == 5, 4, cvind)
    with pytest.raises(CvindError, match=r"official fold 5 \(split.fold=4\) has no slices in data/raw; "
                                         r"folds present: 1, 2, 3, 4: set split.fold to one of 0, 1, 2, 3"):
        assign_official(pids, labels, ids, cvind, fold=4, val=0.15, seed=0, families=patient_families(pids))


def test_a_slice_without_a_fold_is_refused():
    pids, labels, ids, cvind = toy_dataset()
    with pytest.raises(CvindError, match=r"1 slice\(s\) have no fold .* first id without one: 123"):
        assign_official(pids, labels, ids, cvind[:-1], fold=0, val=0.15, seed=0,
                        families=patient_families(pids))


def test_params_require_a_fold_in_cvind_mode():
    params = load_params(PARAMS)
    with pytest.raises(ConfigError, match=r"split.fold must be 0..4.*-S split.fold=0"):
        params.replaced({"split.scheme": "cvind", "split.fold": None})
    with pytest.raises(ConfigError, match="split.fold must be 0..4"):
        params.replaced({"split.scheme": "cvind", "split.fold": 5})
    assert params.replaced({"split.scheme": "cvind", "split.fold": 4}).split.fold == 4


def test_params_check_the_validation_fold():
    params = load_params(PARAMS)
    assert params.split.val_fold is None
    assert params.replaced({"split.fold": 3, "split.val_fold": 0}).split.val_fold == 0
    with pytest.raises(ConfigError, match=r"split.val_fold \(2\) is the test fold split.fold"):
        params.replaced({"split.fold": 2, "split.val_fold": 2})
    with pytest.raises(ConfigError, match="split.val_fold takes an official fold: it needs split.scheme cvind"):
        params.replaced({"split.scheme": "random", "split.fold": None, "split.val_fold": 1})
    with pytest.raises(ConfigError, match="split.val_fold"):
        params.replaced({"split.val_fold": 5})


def test_synthetic_source_writes_patient_level_folds(tmp_path):
    count = write_dataset(tmp_path, patients=15, slices_per_patient=2, image_size=64, seed=0)
    folds = read_cvind(tmp_path / "cvind.mat")
    assert len(folds) == count == 30
    assert set(folds) == {1, 2, 3, 4, 5}
    assert (folds[0::2] == folds[1::2]).all()  # a patient's two slices share a fold


def write_v73(path, make_dataset):
    """A cvind.mat laid out as the figshare one, its 'cvind' made by make_dataset(h5py.File)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        make_dataset(f)
    from tumorseg.data.matfile import matlab_header

    with open(path, "r+b") as f:
        f.write(matlab_header())


def test_data_stored_elsewhere_is_refused_before_it_is_read(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(8, 3.0).tobytes())  # would read as valid folds, from another file
    cases = {
        "uses external storage": lambda f: f.create_dataset("cvind", shape=(8, 1), dtype="f8",
                                                            external=[(str(secret), 0, 64)]),
        "is a ExternalLink": lambda f: f.__setitem__("cvind", h5py.ExternalLink(str(tmp_path / "other.h5"), "x")),
        "is a SoftLink": lambda f: (f.create_dataset("folds", data=np.ones((8, 1))),
                                    f.__setitem__("cvind", h5py.SoftLink("/folds"))),
    }
    with h5py.File(tmp_path / "other.h5", "w") as other:
        other["x"] = np.ones((8, 1))
    for expected, make in cases.items():
        write_v73(tmp_path / "cvind.mat", make)
        with pytest.raises(CvindError, match=f"field 'cvind' {expected}.*refusing"):
            read_cvind(tmp_path / "cvind.mat")
    layout = h5py.VirtualLayout(shape=(8, 1), dtype="f8")
    layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "x", shape=(8, 1))
    write_v73(tmp_path / "cvind.mat", lambda f: f.create_virtual_dataset("cvind", layout))
    with pytest.raises(CvindError, match="field 'cvind' uses a virtual dataset"):
        read_cvind(tmp_path / "cvind.mat")


def test_a_small_file_declaring_a_huge_cvind_is_refused_by_its_declared_size(tmp_path):
    write_v73(tmp_path / "cvind.mat", lambda f: f.create_dataset("cvind", shape=(1, 600_000_000), dtype="f8",
                                                                 chunks=(1, 1_000_000), fillvalue=1.0))
    assert (tmp_path / "cvind.mat").stat().st_size < 10_000
    with pytest.raises(CvindError, match=r"declares shape \(1, 600000000\), more than 100,000 entries"):
        read_cvind(tmp_path / "cvind.mat")
    savemat(tmp_path / "cvind.mat", {"cvind": np.ones((1, 200_000))}, do_compression=True)
    with pytest.raises(CvindError, match=r"declares shape \(1, 200000\)"):
        read_cvind(tmp_path / "cvind.mat")


def test_a_v5_file_is_read_for_cvind_alone(tmp_path):
    import tracemalloc

    folds = (np.arange(3064) % 5 + 1).astype(float).reshape(1, -1)
    # junk first: scipy's loadmat(variable_names=...) and whosmat would inflate it on the way to cvind
    savemat(tmp_path / "cvind.mat", {"junk": np.zeros((4000, 4000)), "cvind": folds}, do_compression=True)
    assert (tmp_path / "cvind.mat").stat().st_size < 1_000_000  # the junk is 128 MB when read
    tracemalloc.start()
    found = read_cvind(tmp_path / "cvind.mat")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(found, folds.ravel())
    assert peak < 16 * 2**20, f"reading cvind took {peak / 2**20:.0f} MiB: the junk variable was read"


def test_logical_or_complex_folds_are_refused(tmp_path):
    def logical(f):
        dataset = f.create_dataset("cvind", data=np.ones((8, 1), np.uint8))
        dataset.attrs["MATLAB_class"] = np.bytes_("logical")

    write_v73(tmp_path / "cvind.mat", logical)
    with pytest.raises(CvindError, match="logical values"):
        read_cvind(tmp_path / "cvind.mat")
    savemat(tmp_path / "cvind.mat", {"cvind": np.ones((1, 8)) + 0j})
    with pytest.raises(CvindError, match="holds complex values"):
        read_cvind(tmp_path / "cvind.mat")
    savemat(tmp_path / "cvind.mat", {"cvind": np.ones((1, 8), bool)})
    with pytest.raises(CvindError, match="holds logical values"):
        read_cvind(tmp_path / "cvind.mat")
    savemat(tmp_path / "cvind.mat", {"cvind": np.ones((1, 8), bool)}, do_compression=True)
    with pytest.raises(CvindError, match="holds logical values"):
        read_cvind(tmp_path / "cvind.mat")


def test_a_compressed_cvind_whose_data_inflates_beyond_its_size_is_refused(tmp_path):
    import struct
    import zlib

    savemat(tmp_path / "small.mat", {"cvind": np.ones((1, 8))}, do_compression=False)
    data = (tmp_path / "small.mat").read_bytes()
    element = bytearray(data[128:])  # the miMATRIX element of cvind, declaring 1 x 8 doubles
    body = bytes(element) + b"\0" * (50 * 2**20)  # followed by 50 MiB that a parser following the stream inflates
    compressed = zlib.compress(body, 9)
    (tmp_path / "cvind.mat").write_bytes(data[:128] + struct.pack("<II", 15, len(compressed)) + compressed)
    assert (tmp_path / "cvind.mat").stat().st_size < 200_000
    with pytest.raises(CvindError, match="'cvind' inflates to more than"):
        read_cvind(tmp_path / "cvind.mat")
