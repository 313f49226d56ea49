import csv
import os

import h5py
import numpy as np
import pytest
from scipy import ndimage

from tumorseg.data.matfile import MatFormatError, Slice, read_slice, write_slice


def border_on_mask_boundary(slice_):
    """Fraction of tumorBorder points (x = column, y = row, 1-based) on the mask's outline (1-pixel tolerance)."""
    mask = slice_.mask.astype(bool)
    outline = mask & ~ndimage.binary_erosion(mask)
    near_outline = ndimage.binary_dilation(outline, iterations=1)
    cols = np.clip(np.round(slice_.border[:, 0]).astype(int) - 1, 0, mask.shape[1] - 1)
    rows = np.clip(np.round(slice_.border[:, 1]).astype(int) - 1, 0, mask.shape[0] - 1)
    return near_outline[rows, cols].mean()


def test_real_sample_matches_manifest(real_sample):
    with open(real_sample / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == 60
    for row in manifest:
        slice_ = read_slice(real_sample / "mat" / f"{row['index']}.mat")
        assert slice_.label == int(row["label"])
        assert slice_.pid == row["pid"]
        assert "x".join(map(str, slice_.image.shape)) == row["img_shape"]
        assert int(slice_.mask.sum()) == int(row["tumor_pixels"])
        assert int(slice_.image.max()) == int(row["img_max"])
        assert slice_.image.dtype == np.int16 and slice_.mask.dtype == np.uint8


def test_real_sample_orientation_from_tumor_border(real_sample):
    """tumorBorder is in display coordinates, so it must trace the transposed (displayed) mask, not the raw one."""
    displayed, untransposed = [], []
    for path in sorted((real_sample / "mat").glob("*.mat")):
        slice_ = read_slice(path)
        displayed.append(border_on_mask_boundary(slice_))
        untransposed.append(border_on_mask_boundary(Slice(slice_.image.T, slice_.mask.T, 0, "", slice_.border)))
    assert min(displayed) > 0.7 and np.mean(displayed) > 0.95
    assert max(untransposed) < 0.5 and np.mean(untransposed) < 0.1


def small_slice():
    image = np.arange(12 * 10, dtype=np.int16).reshape(12, 10)
    mask = np.zeros((12, 10), np.uint8)
    mask[3:6, 2:5] = 1
    border = np.array([[3.0, 4.0], [5.0, 4.0], [5.0, 6.0], [3.0, 6.0]])
    return Slice(image, mask, 2, "MR051461", border)


def test_write_then_read_round_trip(tmp_path):
    original = small_slice()
    write_slice(tmp_path / "7.mat", original)
    back = read_slice(tmp_path / "7.mat")
    np.testing.assert_array_equal(back.image, original.image)
    np.testing.assert_array_equal(back.mask, original.mask)
    np.testing.assert_array_equal(back.border, original.border)
    assert (back.label, back.pid) == (2, "MR051461")
    with h5py.File(tmp_path / "7.mat") as f:
        assert f["cjdata/image"].shape == (10, 12)  # stored transposed, as MATLAB does
        assert f["cjdata/PID"].dtype == np.uint16 and f["cjdata/PID"].shape == (8, 1)
        assert f["cjdata/label"].dtype == np.float64 and f["cjdata/label"].shape == (1, 1)
        assert f["cjdata/tumorBorder"].shape == (1, 8)
    assert (tmp_path / "7.mat").read_bytes()[:10] == b"MATLAB 7.3"


def test_truncated_file_is_reported(tmp_path):
    write_slice(tmp_path / "1.mat", small_slice())
    data = (tmp_path / "1.mat").read_bytes()
    (tmp_path / "2.mat").write_bytes(data[: len(data) // 2])
    with pytest.raises(MatFormatError, match="2.mat"):
        read_slice(tmp_path / "2.mat")


def test_matlab_v5_file_is_reported(tmp_path):
    path = tmp_path / "3.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(128, b" ") + b"\x00" * 64)
    with pytest.raises(MatFormatError, match="v7.3"):
        read_slice(path)


def test_not_a_mat_file_is_reported(tmp_path):
    path = tmp_path / "4.mat"
    path.write_text("not a MATLAB file")
    with pytest.raises(MatFormatError, match="4.mat"):
        read_slice(path)


@pytest.mark.parametrize("drop", ["tumorMask", "label", "PID"])
def test_missing_field_is_reported(tmp_path, drop):
    path = tmp_path / "5.mat"
    write_slice(path, small_slice())
    with h5py.File(path, "r+") as f:
        del f["cjdata"][drop]
    with pytest.raises(MatFormatError, match=drop):
        read_slice(path)


def test_missing_struct_and_wrong_shapes_are_reported(tmp_path):
    path = tmp_path / "6.mat"
    write_slice(path, small_slice())
    with h5py.File(path, "r+") as f:
        del f["cjdata"]["tumorMask"]
        f["cjdata"].create_dataset("tumorMask", data=np.zeros((3, 3), np.uint8))
    with pytest.raises(MatFormatError, match="same shape"):
        read_slice(path)
    with h5py.File(path, "r+") as f:
        del f["cjdata"]
    with pytest.raises(MatFormatError, match="cjdata"):
        read_slice(path)


@pytest.mark.parametrize(
    "field, data, message",
    [
        ("PID", np.array([[77.0], [82.0]]), "field 'PID' must hold integer character codes, found float64"),
        ("PID", np.zeros((2, 1), np.uint16), "field 'PID' must hold character codes"),
        ("label", np.array([b"glioma"]), "field 'label' must hold numbers"),
        ("image", np.full((12, 10), np.nan), "field 'image' holds NaN"),
        ("tumorMask", np.array([b"x"] * 3), "field 'tumorMask' must hold numbers"),
    ],
)
def test_odd_field_types_name_the_file_and_the_field(tmp_path, field, data, message):
    path = tmp_path / "8.mat"
    write_slice(path, small_slice())
    with h5py.File(path, "r+") as f:
        del f["cjdata"][field]
        f["cjdata"].create_dataset(field, data=data)
    with pytest.raises(MatFormatError, match=message) as error:
        read_slice(path)
    assert str(error.value).startswith(f"{path}: ")


def test_a_field_that_is_a_group_is_reported(tmp_path):
    path = tmp_path / "9.mat"
    write_slice(path, small_slice())
    with h5py.File(path, "r+") as f:
        del f["cjdata"]["image"]
        f["cjdata"].create_group("image")
    with pytest.raises(MatFormatError, match="field 'image' must hold numbers, found Group"):
        read_slice(path)


def replace_field(path, field, make):
    """Delete cjdata/field and let make(group, f) put something else in its place."""
    with h5py.File(path, "r+") as f:
        del f["cjdata"][field]
        make(f["cjdata"], f)


def test_a_field_stored_in_another_file_is_refused(tmp_path):
    """A PID with external storage on a local file would copy that file's bytes into every output."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes("root:x:0:0".encode().ljust(64, b" "))
    path = tmp_path / "1.mat"
    write_slice(path, small_slice())
    replace_field(path, "PID", lambda group, f: group.create_dataset(
        "PID", shape=(32, 1), dtype=np.uint16, external=[(str(secret), 0, 64)]))
    with pytest.raises(MatFormatError, match="field 'PID' uses external storage"):
        read_slice(path)


def test_external_and_soft_links_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["image"] = np.ones((12, 10), np.int16)
    path = tmp_path / "2.mat"
    write_slice(path, small_slice())
    replace_field(path, "image", lambda group, f: group.__setitem__("image", h5py.ExternalLink(str(other), "image")))
    with pytest.raises(MatFormatError, match="field 'image' is a ExternalLink"):
        read_slice(path)
    write_slice(path, small_slice())
    replace_field(path, "label", lambda group, f: group.__setitem__("label", h5py.SoftLink("/cjdata/PID")))
    with pytest.raises(MatFormatError, match="field 'label' is a SoftLink"):
        read_slice(path)


def test_a_virtual_dataset_is_refused(tmp_path):
    other = tmp_path / "source.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.ones((10, 12), np.int16)

    def virtual(group, f):
        layout = h5py.VirtualLayout(shape=(10, 12), dtype=np.int16)
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(10, 12))
        group.create_virtual_dataset("image", layout)

    path = tmp_path / "3.mat"
    write_slice(path, small_slice())
    replace_field(path, "image", virtual)
    with pytest.raises(MatFormatError, match="field 'image' uses a virtual dataset"):
        read_slice(path)


def test_a_huge_declared_image_is_refused_before_reading(tmp_path):
    """A small gzip file can declare a 1e6 x 1e6 image; it is refused from its shape alone."""
    path = tmp_path / "4.mat"
    write_slice(path, small_slice())
    replace_field(path, "image", lambda group, f: group.create_dataset(
        "image", shape=(1_000_000, 1_000_000), dtype=np.int16, chunks=(1024, 1024), compression="gzip"))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(MatFormatError, match=r"field 'image' declares shape \(1000000, 1000000\): more than 4096"):
        read_slice(path)


def test_a_pid_longer_than_64_characters_is_refused(tmp_path):
    path = tmp_path / "5.mat"
    write_slice(path, Slice(**{**small_slice().__dict__, "pid": "P" * 65}))
    with pytest.raises(MatFormatError, match=r"field 'PID' declares shape \(65, 1\): more than 64"):
        read_slice(path)
    write_slice(path, Slice(**{**small_slice().__dict__, "pid": "P" * 64}))
    assert read_slice(path).pid == "P" * 64


@pytest.mark.parametrize("label", [1.7, np.nan, 0.0, 4.0])
def test_a_label_that_is_no_class_is_refused(tmp_path, label):
    path = tmp_path / "6.mat"
    write_slice(path, small_slice())
    replace_field(path, "label", lambda group, f: group.create_dataset("label", data=np.array([[label]])))
    with pytest.raises(MatFormatError, match="label must be one of 1, 2, 3"):
        read_slice(path)


def test_cjdata_stored_as_a_dataset_is_reported(tmp_path):
    path = tmp_path / "7.mat"
    write_slice(path, small_slice())
    with h5py.File(path, "r+") as f:
        del f["cjdata"]
        f["cjdata"] = np.zeros(3)
    with pytest.raises(MatFormatError, match="'cjdata' must be a struct"):
        read_slice(path)


def test_a_fifo_named_like_a_slice_is_reported_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "8.mat")
    with pytest.raises(MatFormatError, match="not a regular file"):
        read_slice(tmp_path / "8.mat")


def test_pids_beyond_the_basic_plane_round_trip(tmp_path):
    path = tmp_path / "9.mat"
    write_slice(path, Slice(**{**small_slice().__dict__, "pid": "MR\U0001F600\u00e91"}))
    assert read_slice(path).pid == "MR\U0001F600\u00e91"


@pytest.mark.parametrize("codes, message", [
    ([0x4D, 0xD800], "lone UTF-16 surrogate"),
    ([ord(c) for c in "=HYPERLINK(1)"], "starts with '='"),
    ([ord(c) for c in "@SUM(1)"], "starts with '@'"),
])
def test_pids_that_break_text_or_spreadsheets_are_refused(tmp_path, codes, message):
    path = tmp_path / "10.mat"
    write_slice(path, small_slice())
    replace_field(path, "PID", lambda group, f: group.create_dataset(
        "PID", data=np.array(codes, dtype=np.uint16).reshape(-1, 1)))
    with pytest.raises(MatFormatError, match=message):
        read_slice(path)


@pytest.mark.parametrize("dtype, values", [("uint16", (0, 40000, 65535)), ("float64", (0.0, 0.37, 0.99)),
                                           ("float32", (-0.5, 0.25, 1e5))])
def test_images_are_kept_by_value_whatever_their_type(tmp_path, dtype, values):
    """A uint16 image above 32767 must not wrap to negative, a float image below 1 must not be truncated."""
    image = np.array(values, dtype=dtype)[np.arange(12 * 10) % 3].reshape(12, 10)  # small_slice's shape
    path = tmp_path / "1.mat"
    write_slice(path, small_slice())
    replace_field(path, "image", lambda group, f: group.create_dataset("image", data=image.T))
    read = read_slice(path).image
    np.testing.assert_array_equal(read, image.astype(np.float32))
    assert read.dtype == np.float32


def test_a_uint16_image_converts_like_the_same_image_in_int16(tmp_path):
    """The normalisation divides by a percentile, so the scale of an image does not change the model input."""
    from tumorseg.data.convert import convert_slice

    image = (np.arange(32 * 32).reshape(32, 32) % 97).astype(np.uint16)
    low, high = tmp_path / "1.mat", tmp_path / "2.mat"
    write_slice(low, Slice(image.astype(np.int16), np.zeros((32, 32), np.uint8), 1, "P1", np.zeros((1, 2))))
    write_slice(high, Slice(image.astype(np.int16), np.zeros((32, 32), np.uint8), 1, "P1", np.zeros((1, 2))))
    replace_field(high, "image", lambda group, f: group.create_dataset("image", data=(image * 600).T))
    assert (image * 600).max() > 32767
    small, large = convert_slice(low, 16, 99.5)[0], convert_slice(high, 16, 99.5)[0]
    assert small.max() > 0
    # equal up to the rounding of Pillow's 16-bit area average, which the int16 image goes through
    np.testing.assert_allclose(large, small, atol=0.01)
