"""The compact copy of data/numpy carried to a GPU machine (tumorseg.data.packed)."""

import numpy as np
import pytest

from tumorseg.data.arrays import load_arrays
from tumorseg.data.packed import pack, unpack
from tumorseg.errors import InputError


def write_arrays(folder, count=4, size=24):
    folder.mkdir(parents=True)
    y, x = np.mgrid[:size, :size] / size
    images = np.stack([np.clip(0.2 + 0.6 * x * y + 0.1 * k, 0, 1) for k in range(count)]).astype(np.float32)
    masks = np.zeros((count, size, size), np.uint8)
    for k in range(count):
        masks[k, 3 + k:9 + k, 5:11] = 1
    np.save(folder / "images.npy", images)
    np.save(folder / "masks.npy", masks)
    np.save(folder / "labels.npy", np.array([1, 2, 3, 2][:count], np.uint8))
    np.save(folder / "pids.npy", np.array([f"MR{k}<b>" for k in range(count)]))
    np.save(folder / "ids.npy", np.array([11, 5, 300, 7][:count], np.int32))
    return images, masks


@pytest.mark.parametrize("image_format, tolerance", [("png", 0.5 / 255 + 1e-6), ("jpeg", 0.02)])
def test_round_trip(tmp_path, image_format, tolerance):
    images, masks = write_arrays(tmp_path / "numpy")
    size = pack(tmp_path / "numpy", tmp_path / "data.npz", image_format)
    assert size == (tmp_path / "data.npz").stat().st_size
    assert unpack(tmp_path / "data.npz", tmp_path / "back") == 4
    back = load_arrays(tmp_path / "back")
    assert back["images"].dtype == np.float32 and back["images"].shape == images.shape
    assert np.abs(back["images"] - images).max() <= tolerance
    np.testing.assert_array_equal(back["masks"], masks)  # masks are exact
    for name in ("labels", "pids", "ids"):
        np.testing.assert_array_equal(back[name], np.load(tmp_path / "numpy" / f"{name}.npy"))


def test_png_is_exact_on_8_bit_levels(tmp_path):
    images, _ = write_arrays(tmp_path / "numpy")
    np.save(tmp_path / "numpy" / "images.npy", (np.rint(images * 255) / 255).astype(np.float32))
    pack(tmp_path / "numpy", tmp_path / "data.npz", "png")
    unpack(tmp_path / "data.npz", tmp_path / "back")
    np.testing.assert_allclose(np.load(tmp_path / "back" / "images.npy"), np.rint(images * 255) / 255, atol=1e-7)


def test_truncated_and_missing_files_are_named_and_nothing_is_written(tmp_path):
    write_arrays(tmp_path / "numpy")
    pack(tmp_path / "numpy", tmp_path / "data.npz")
    data = (tmp_path / "data.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.npz is not a readable packed data file"):
        unpack(tmp_path / "cut.npz", tmp_path / "back")
    with pytest.raises(InputError, match="none.npz does not exist"):
        unpack(tmp_path / "none.npz", tmp_path / "back")
    assert not (tmp_path / "back").exists()
