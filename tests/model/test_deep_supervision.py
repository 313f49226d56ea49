"""Deep supervision (model.deep_supervision): the coarser levels' outputs, their loss weights, the batches,
training, and the published model without them."""

import keras
import numpy as np
import pytest

from tests.helpers import make_params, synthetic_project
from tumorseg.model.build import (
    build_model,
    compile_settings,
    load_initial_weights,
    mask_targets,
)
from tumorseg.model.encoders import build_encoder_unet
from tumorseg.model.losses import BceDiceLoss
from tumorseg.model.unet import (
    build_unet,
    supervised_levels,
    without_training_outputs,
)
from tumorseg.train.batches import ArrayBatches, make_batches
from tumorseg.train.loop import TrainPaths, train


def test_each_coarser_decoder_level_gets_a_full_size_mask():
    model = build_unet(32, depth=3, filters=4, deep_supervision=True)
    assert model.output_names == ["mask", "mask_level1", "mask_level2"]
    assert list(supervised_levels(3)) == ["mask_level1", "mask_level2"]
    out = model.predict_on_batch(np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32))
    for name in model.output_names:
        assert out[name].shape == (2, 32, 32, 1) and 0 <= out[name].min() and out[name].max() <= 1
    # the level-2 head sees the decoder at 8x8: its mask is a bilinear upsampling, smooth at full size
    assert model.get_layer("mask_level2_logits").output.shape == (None, 8, 8, 1)
    assert model.get_layer("mask_level1_logits").output.shape == (None, 16, 16, 1)


def test_an_encoder_model_and_the_type_head_get_them_too():
    model = build_encoder_unet(32, "vgg16", depth=2, filters=4, encoder_weights="none", classify=True,
                               deep_supervision=True)
    assert set(model.output_names) == {"mask", "tumor_type", "mask_level1"}


def test_without_training_outputs_keeps_the_mask_and_its_values():
    model = build_unet(32, depth=3, filters=4, classify=True, deep_supervision=True)
    published = without_training_outputs(model)
    assert set(published.output_names) == {"mask", "tumor_type"}
    images = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    np.testing.assert_array_equal(published.predict_on_batch(images)["mask"], model.predict_on_batch(images)["mask"])
    plain = without_training_outputs(build_unet(32, depth=3, filters=4, deep_supervision=True))
    assert plain.output_names == ["mask"] and plain.predict_on_batch(images).shape == (3, 32, 32, 1)
    untouched = build_unet(32, depth=3, filters=4)
    assert without_training_outputs(untouched) is untouched


def test_the_total_loss_weighs_level_k_by_one_half_to_the_k():
    keras.utils.set_random_seed(0)
    params = make_params({"data.image_size": 32, "model": {"depth": 3, "filters": 4, "deep_supervision": True}})
    model = build_model(params)
    segmentation = BceDiceLoss()
    model.compile(optimizer="adam", **compile_settings(segmentation, params))
    rng = np.random.default_rng(2)
    images = rng.random((4, 32, 32, 1), dtype=np.float32)
    masks = (rng.random((4, 32, 32, 1)) > 0.7).astype(np.float32)
    scores = model.evaluate(images, {name: masks for name in mask_targets(params)}, verbose=0, return_dict=True)
    out = model.predict_on_batch(images)
    parts = {name: float(segmentation(masks, out[name])) for name in model.output_names}
    assert scores["mask_level1_loss"] == pytest.approx(parts["mask_level1"], rel=1e-4)
    expected = parts["mask"] + 0.5 * parts["mask_level1"] + 0.25 * parts["mask_level2"]
    assert scores["loss"] == pytest.approx(expected, rel=1e-4)
    assert "mask_level1_dice" not in scores  # the metrics are the main mask's only


@pytest.mark.parametrize("pipeline", ["tf.data", "arrays"])
def test_batches_carry_the_mask_under_each_supervised_output(pipeline):
    rng = np.random.default_rng(3)
    images = rng.random((5, 8, 8), dtype=np.float32)
    masks = (images > 0.5).astype(np.float32)
    names = ["mask", "mask_level1", "mask_level2"]
    if pipeline == "arrays":
        batches = ArrayBatches(images, masks, 2, mask_outputs=names)
        batches = [batches[index] for index in range(len(batches))]
    else:
        batches = [(np.asarray(x), {k: np.asarray(v) for k, v in y.items()})
                   for x, y in make_batches(images, masks, 2, mask_outputs=names)]
    assert sum(len(x) for x, _ in batches) == 5
    for x, y in batches:
        assert set(y) == set(names)
        for name in names:
            np.testing.assert_array_equal(y[name], (x > 0.5).astype(np.float32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny deeply supervised model trained 2 epochs on synthetic slices."""
    root = synthetic_project(tmp_path_factory.mktemp("deep_supervision"), patients=15, image_size=32, raw_size=128)
    params = make_params({"data.image_size": 32, "model": {"depth": 3, "filters": 4, "deep_supervision": True},
                          "train": {"epochs": 2, "batch_size": 8}})
    metrics = train(params, TrainPaths.under(root))
    return root, params, metrics


def test_training_picks_the_epoch_by_the_main_mask_and_publishes_it_alone(trained):
    root, _, metrics = trained
    assert {"dice", "val_dice", "iou", "val_iou", "mask_level1_loss", "val_mask_level2_loss"} <= set(metrics)
    model = keras.models.load_model(root / "model.keras", compile=False)
    assert model.output_names == ["mask"]
    assert model.predict_on_batch(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 32, 32, 1)


def test_a_published_model_initialises_a_deeply_supervised_one(trained):
    root, params, _ = trained
    model = build_model(params)
    load_initial_weights(model, root / "model.keras")
    published = keras.models.load_model(root / "model.keras", compile=False)
    images = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(model.predict_on_batch(images)["mask"], published.predict_on_batch(images),
                               rtol=1e-5, atol=1e-6)
