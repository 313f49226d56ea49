import csv
import errno
import os
import shutil

import numpy as np
import pytest

from tumorseg.data.arrays import load_arrays
from tumorseg.data.convert import ConversionError, ConvertError, mat_to_numpy
from tumorseg.data.matfile import MatFormatError, Slice, write_slice
from tumorseg.data.preprocess import (
    normalize_intensity,
    preprocess_mask,
    resize_area,
    shrink,
)


def test_resize_area_averages_blocks():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(resize_area(image, 2), [[2.5, 4.5], [10.5, 12.5]])
    assert resize_area(np.ones((256, 256), np.int16), 128).shape == (128, 128)
    np.testing.assert_allclose(resize_area(np.full((3, 3), 7, np.int16), 6), 7.0)


def test_mask_stays_binary_and_keeps_majority_pixels():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1  # whole block -> tumor
    mask[2, 2] = 1  # a quarter of a block -> background
    mask[2:, :2] = [[1, 1], [0, 0]]  # half a block -> tumor
    np.testing.assert_array_equal(preprocess_mask(mask, 2), [[1, 0], [1, 0]])


def test_shrink_averages_image_blocks_and_keeps_half_area_mask_pixels():
    images = np.stack([np.arange(16, dtype=np.float32).reshape(4, 4) / 15, np.ones((4, 4), np.float32)])
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2, :2] = [[1, 1], [0, 0]]  # half a block -> tumour
    masks[0, 2, 2] = 1  # a quarter -> background
    small_images, small_masks = shrink(images, masks, 2)
    np.testing.assert_allclose(small_images[0], np.array([[2.5, 4.5], [10.5, 12.5]]) / 15, rtol=1e-6)
    np.testing.assert_allclose(small_images[1], 1.0)
    np.testing.assert_array_equal(small_masks, [[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    assert small_images.dtype == np.float32 and small_masks.dtype == np.uint8


def test_normalisation_uses_a_robust_percentile():
    image = np.zeros((100, 100))
    image[20:80, 20:80] = 100.0  # a head on a dark background
    image[0, 0] = 10000.0  # one hot pixel must not set the scale
    normalised = normalize_intensity(image, 99.5)
    assert normalised.max() == 1.0 and normalised[50, 50] == pytest.approx(1.0) and normalised[5, 5] == 0.0
    assert normalize_intensity(np.zeros((8, 8))).max() == 0.0


def test_normalisation_ignores_scale_and_offset():
    image = np.random.default_rng(0).gamma(2.0, 300.0, (64, 64))
    reference = normalize_intensity(image)
    for changed in (image * 3.7, image + 500.0, image * 0.01 - 40.0):
        np.testing.assert_allclose(normalize_intensity(changed), reference, atol=1e-5)


def test_real_sample_converts(real_sample, tmp_path):
    count = mat_to_numpy(real_sample / "mat", tmp_path / "numpy", image_size=64)
    arrays = load_arrays(tmp_path / "numpy")
    assert count == 60
    assert arrays["images"].shape == (60, 64, 64) and arrays["images"].dtype == np.float32
    assert 0.0 <= arrays["images"].min() and arrays["images"].max() == 1.0
    assert set(np.unique(arrays["masks"])) == {0, 1}
    with open(real_sample / "manifest.csv") as f:
        manifest = {int(row["index"]): row for row in csv.DictReader(f)}
    for i, index in enumerate(arrays["ids"]):
        assert arrays["labels"][i] == int(manifest[index]["label"])
        assert arrays["pids"][i] == manifest[index]["pid"]
        # 512 -> 64 divides areas by 64; majority rounding keeps the count close
        assert abs(arrays["masks"][i].sum() - int(manifest[index]["tumor_pixels"]) / 64) < 0.25 * int(
            manifest[index]["tumor_pixels"]
        ) / 64 + 4
    assert arrays["pids"].dtype.kind == "U"
    np.load(tmp_path / "numpy" / "pids.npy", allow_pickle=False)


def write_slices(folder, shapes):
    folder.mkdir(parents=True, exist_ok=True)
    for index, shape in enumerate(shapes, start=1):
        image = np.random.default_rng(index).integers(0, 3000, shape).astype(np.int16)
        mask = np.zeros(shape, np.uint8)
        mask[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = 1
        write_slice(folder / f"{index}.mat", Slice(image, mask, 1 + index % 3, f"{100 + index // 2}", np.zeros((0, 2))))


def test_mixed_sizes_and_order(tmp_path):
    write_slices(tmp_path / "raw", [(64, 64), (32, 32), (64, 64)] + [(64, 64)] * 8)
    mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=16, workers=2)
    arrays = load_arrays(tmp_path / "numpy")
    np.testing.assert_array_equal(arrays["ids"], np.arange(1, 12))  # numeric order, not 1, 10, 11, 2, ...
    for mask in arrays["masks"]:
        assert mask.sum() == 16  # a quarter-by-quarter square stays 4x4 at 16x16
    assert arrays["masks"][1][4:8, 4:8].all()


def test_corrupt_file_names_the_file_and_writes_nothing(tmp_path):
    write_slices(tmp_path / "raw", [(32, 32)] * 3)
    data = (tmp_path / "raw" / "2.mat").read_bytes()
    (tmp_path / "raw" / "2.mat").write_bytes(data[:1000])
    with pytest.raises(MatFormatError, match="2.mat"):
        mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=16, workers=1)
    assert not (tmp_path / "numpy").exists()
    assert os.listdir(tmp_path) == ["raw"]


def test_a_disk_without_room_for_the_arrays_is_named_before_anything_is_written(tmp_path, monkeypatch):
    write_slices(tmp_path / "raw", [(32, 32)] * 3)
    mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=16, workers=1)
    before = {path.name: path.read_bytes() for path in (tmp_path / "numpy").iterdir()}
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    with pytest.raises(ConvertError, match=r"MiB needed for the arrays, 0 MiB free on that disk; nothing was written"):
        mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=64, workers=1)
    assert sorted(os.listdir(tmp_path)) == ["numpy", "raw"]  # no .tmp left, the previous arrays kept
    assert {path.name: path.read_bytes() for path in (tmp_path / "numpy").iterdir()} == before


def test_a_disk_that_cannot_reserve_the_arrays_stops_the_stage_cleanly(tmp_path, monkeypatch):
    write_slices(tmp_path / "raw", [(32, 32)] * 3)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ConvertError, match=r"cannot reserve .* MiB for the arrays \(No space left on device\)"):
        mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=16, workers=1)
    assert os.listdir(tmp_path) == ["raw"]


def test_every_bad_file_is_listed_on_its_own_line(tmp_path):
    write_slices(tmp_path / "raw", [(32, 32)] * 5)
    for index in (2, 4):
        (tmp_path / "raw" / f"{index}.mat").write_text("not a slice")
    with pytest.raises(ConversionError) as error:
        mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=16, workers=2)
    first, *lines = str(error.value).splitlines()
    assert first.startswith("2 of 5 slice file(s)") and "nothing was written" in first
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / "raw" / "2.mat"), str(tmp_path / "raw" / "4.mat")]
    assert os.listdir(tmp_path) == ["raw"]


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(ValueError, match="no N.mat"):
        mat_to_numpy(tmp_path / "raw", tmp_path / "numpy")
    with pytest.raises(ConvertError, match="download"):
        mat_to_numpy(tmp_path / "nowhere", tmp_path / "numpy")


def test_arrays_of_different_lengths_are_rejected(tmp_path):
    write_slices(tmp_path / "raw", [(32, 32)] * 3)
    mat_to_numpy(tmp_path / "raw", tmp_path / "numpy", image_size=16, workers=1)
    np.save(tmp_path / "numpy" / "labels.npy", np.ones(2, np.uint8))
    with pytest.raises(ValueError, match="different lengths"):
        load_arrays(tmp_path / "numpy")
