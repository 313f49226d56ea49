"""Training on random crops (train.crop): the windows, both pipelines, the checks, and the published model."""

import keras
import numpy as np
import pytest

from tests.helpers import make_params, synthetic_project
from tumorseg.config import Augment, ConfigError, Crop
from tumorseg.model.build import build_model
from tumorseg.train.batches import ArrayBatches, crop_window, make_batches, window_range
from tumorseg.train.loop import TrainPaths, train
from tumorseg.train.phases import save_for_inference


def test_window_range_keeps_the_pixel_inside_and_the_window_in_the_slice():
    assert window_range(0, 4, 12) == (0, 0)
    assert window_range(5, 4, 12) == (2, 5)
    assert window_range(15, 4, 12) == (12, 12)  # the last pixel of a 16-pixel slice: the last window only
    for pixel in range(16):
        first, last = window_range(pixel, 4, 12)
        assert 0 <= first <= last <= 12 and first <= pixel < last + 4


def test_crop_windows_on_the_tumour_contain_it_and_others_spread_over_the_slice():
    mask = np.zeros((16, 16), np.float32)
    mask[2, 13] = 1  # one tumour pixel
    rng = np.random.default_rng(0)
    corners = [crop_window(mask, 4, 1.0, rng) for _ in range(200)]
    assert all(r <= 2 < r + 4 and c <= 13 < c + 4 for r, c in corners)
    assert {r for r, _ in corners} == {0, 1, 2} and {c for _, c in corners} == {10, 11, 12}
    anywhere = [crop_window(mask, 4, 0.0, rng) for _ in range(500)]
    assert {r for r, _ in anywhere} == set(range(13))
    assert crop_window(np.zeros((16, 16)), 4, 1.0, rng) in {(r, c) for r in range(13) for c in range(13)}


def epoch_of(pipeline, images, masks, crop):
    settings = dict(augment=Augment(hflip=False), seed=3, crop=crop)
    if pipeline == "arrays":
        batches = ArrayBatches(images, masks, 4, True, **settings)
        return [batches[index] for index in range(len(batches))]
    return [(np.asarray(x), np.asarray(y)) for x, y in make_batches(images, masks, 4, True, **settings)]


@pytest.mark.parametrize("pipeline", ["tf.data", "arrays"])
def test_each_training_slice_is_cut_to_a_window_of_itself(pipeline):
    rng = np.random.default_rng(1)
    images = rng.random((10, 32, 32), dtype=np.float32)
    masks = np.zeros_like(images)
    for k in range(10):
        row, col = rng.integers(0, 29, 2)
        masks[k, row:row + 3, col:col + 3] = 1
    batches = epoch_of(pipeline, images, masks, Crop(size=8, tumour=1.0))
    x = np.concatenate([x for x, _ in batches])[..., 0]
    y = np.concatenate([y for _, y in batches])[..., 0]
    assert x.shape == y.shape == (10, 8, 8)
    assert (y.reshape(10, -1).max(axis=1) == 1).all()  # every window holds tumour
    for image, mask in zip(x, y):
        windows = [(k, r, c) for k in range(10) for r in range(25) for c in range(25)
                   if np.array_equal(images[k, r:r + 8, c:c + 8], image)]
        assert len(windows) == 1
        k, r, c = windows[0]
        np.testing.assert_array_equal(masks[k, r:r + 8, c:c + 8], mask)  # the mask cut with its image
    validation = make_batches(images, masks, 4, crop=Crop(size=8, tumour=1.0))
    assert np.asarray(next(iter(validation))[0]).shape == (4, 32, 32, 1)  # whole slices


def test_crop_sizes_the_model_cannot_take_are_refused():
    with pytest.raises(ConfigError, match=r"train.crop.size \(100\) must be below data.image_size \(128\) and "
                                          r"divisible by 2\*\*model.depth \(16\)"):
        make_params({"train.crop.size": 100})
    with pytest.raises(ConfigError, match="train.crop needs model.encoder none and no train.progressive"):
        make_params({"train.crop.size": 64, "train.progressive": {"size": 64, "epochs": 5}})


def test_training_on_crops_publishes_a_model_for_whole_slices(tmp_path):
    root = synthetic_project(tmp_path, patients=15, image_size=64, raw_size=128)
    params = make_params({"data.image_size": 64, "model": {"depth": 2, "filters": 4},
                          "train": {"epochs": 2, "batch_size": 8, "crop": {"size": 32, "tumour": 0.5}}})
    assert build_model(params).input_shape == (None, None, None, 1)
    metrics = train(params, TrainPaths.under(root))
    assert metrics["epochs"] == 2 and 0 <= metrics["val_dice"] <= 1
    model = keras.models.load_model(root / "model.keras", compile=False)
    assert model.input_shape == (None, 64, 64, 1) and model.output_shape == (None, 64, 64, 1)


def test_the_published_model_predicts_as_the_model_trained_on_crops(tmp_path):
    params = make_params({"data.image_size": 32, "model": {"depth": 2, "filters": 4, "deep_supervision": True},
                          "train.crop.size": 16})
    trained = build_model(params)
    trained.save(tmp_path / "best.keras")
    save_for_inference(tmp_path / "best.keras", tmp_path / "model.keras", 32)
    published = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert published.input_shape == (None, 32, 32, 1) and published.output_names == ["mask"]
    images = np.random.default_rng(2).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(published.predict_on_batch(images), trained.predict_on_batch(images)["mask"],
                               rtol=1e-5, atol=1e-6)
