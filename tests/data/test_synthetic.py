"""Tests of the synthetic figshare-layout slice generator."""

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from tumorseg.data.matfile import read_slice
from tumorseg.data.synthetic import make_slice, write_dataset

REAL_SAMPLE = Path(__file__).parents[2] / ".." / "shared" / "data" / "figshare-sample"
PATIENTS, SLICES = 10, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    count = write_dataset(folder, PATIENTS, SLICES, image_size=512, seed=3)
    return folder, count


def read_all(folder, count):
    return [read_slice(folder / f"{i}.mat") for i in range(1, count + 1)]


def border_distances(slice_):
    """Pixel distance from each tumorBorder point (1-based x=column, y=row) to the mask's boundary pixels."""
    mask = slice_.mask.astype(bool)
    boundary = mask & ~ndimage.binary_erosion(mask)
    distance = ndimage.distance_transform_edt(~boundary)
    rows = np.clip(np.rint(slice_.border[:, 1]).astype(int) - 1, 0, mask.shape[0] - 1)
    cols = np.clip(np.rint(slice_.border[:, 0]).astype(int) - 1, 0, mask.shape[1] - 1)
    return distance[rows, cols]


def distance_to_head_edge(slice_):
    """Smallest distance (pixels) from the tumor to the outside of the head, found from the image."""
    image = ndimage.gaussian_filter(slice_.image.astype(np.float32), 2)
    head = ndimage.binary_fill_holes(image > 0.3 * np.percentile(image, 75))
    return ndimage.distance_transform_edt(head)[slice_.mask > 0].min()


def test_writes_numbered_files_and_returns_count(dataset):
    folder, count = dataset
    assert count == PATIENTS * SLICES
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{i}.mat" for i in range(1, count + 1)] + ["cvind.mat"])


def test_same_seed_same_arrays_other_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        (tmp_path / name).mkdir()
        count = write_dataset(tmp_path / name, 4, 2, image_size=64, seed=seed)
        runs[name] = read_all(tmp_path / name, count)
    for first, second in zip(runs["a"], runs["b"]):
        assert np.array_equal(first.image, second.image) and np.array_equal(first.mask, second.mask)
        assert (first.label, first.pid) == (second.label, second.pid)
        assert np.array_equal(first.border, second.border)
    assert any(not np.array_equal(a.image, c.image) for a, c in zip(runs["a"], runs["c"]))


def test_slices_read_back_like_the_real_files(dataset):
    slices = read_all(*dataset)
    assert {s.label for s in slices} == {1, 2, 3}
    per_pid = Counter(s.pid for s in slices)
    assert len(per_pid) == PATIENTS and set(per_pid.values()) == {SLICES}
    assert all(pid.isdigit() for pid in per_pid)
    assert all(len({s.label for s in slices if s.pid == pid}) == 1 for pid in per_pid)
    for s in slices:
        assert s.image.dtype == np.int16 and 0 <= s.image.min() and s.image.max() <= 13000
        assert set(np.unique(s.mask)) == {0, 1}
        assert 20 <= len(s.border) <= 80
    sizes = Counter(s.image.shape for s in slices)
    assert set(sizes) == {(512, 512), (256, 256)} and sizes[(256, 256)] >= SLICES


def test_raw_hdf5_layout(dataset):
    folder, _ = dataset
    path = folder / "1.mat"
    assert path.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        group = f["cjdata"]
        assert group["label"].dtype == np.float64 and group["label"].shape == (1, 1)
        pid = group["PID"]
        assert pid.dtype == np.uint16 and pid.shape[1] == 1 and pid.shape[0] >= 1
        assert group["image"].dtype == np.int16 and group["tumorMask"].dtype == np.uint8
        assert group["image"].shape == group["tumorMask"].shape
        border = group["tumorBorder"]
        assert border.dtype == np.float64 and border.shape[0] == 1 and border.shape[1] % 2 == 0
        stored_mask = group["tumorMask"][()]
    assert np.array_equal(stored_mask.T, read_slice(path).mask)


def test_border_points_lie_on_the_mask_boundary(dataset):
    for s in read_all(*dataset):
        assert border_distances(s).max() == 0


@pytest.mark.skipif(not (REAL_SAMPLE / "mat").is_dir(), reason=f"real figshare sample not found at {REAL_SAMPLE}")
def test_border_check_holds_on_the_real_sample():
    paths = sorted((REAL_SAMPLE / "mat").glob("*.mat"))
    assert len(paths) == 60, "the shared sample holds 60 slices"
    for path in paths:
        distances = border_distances(read_slice(path))
        assert distances.max() <= 3 and np.median(distances) <= 1, path.name


def test_tumor_site_depends_on_class():
    size, count = 128, 12
    by_label = {
        label: [make_slice(np.random.default_rng([label, i]), label, "1", size) for i in range(count)]
        for label in (1, 2, 3)
    }
    for s in by_label[3]:
        rows, cols = np.nonzero(s.mask)
        assert abs(cols.mean() - size / 2) < 0.06 * size and rows.mean() > 0.55 * size
    meningioma = [distance_to_head_edge(s) for s in by_label[1]]
    glioma = [distance_to_head_edge(s) for s in by_label[2]]
    assert max(meningioma) < 0.1 * size
    assert np.mean(meningioma) < np.mean(glioma)


def test_tumors_are_large_enough_to_learn():
    for label in (1, 2, 3):
        for i in range(6):
            s = make_slice(np.random.default_rng([9, label, i]), label, "1", 128, position=1.0)
            assert s.mask.mean() > 0.005
            inside, around = s.image[s.mask > 0].mean(), s.image[ndimage.binary_dilation(s.mask, iterations=4) & (s.mask == 0)].mean()
            assert abs(inside - around) > 0.2 * around
