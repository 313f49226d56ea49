import keras
import numpy as np
import pytest

from tests.helpers import make_params
from tumorseg.model.build import InitError, build_model, load_initial_weights
from tumorseg.model.losses import BceDiceLoss, dice_score, training_metrics
from tumorseg.model.unet import build_unet


@pytest.mark.parametrize("image_size, depth, filters", [(32, 1, 4), (64, 3, 4), (128, 4, 2), (64, 5, 2)])
def test_output_shape(image_size, depth, filters):
    model = build_unet(image_size, depth=depth, filters=filters)
    output = model(np.zeros((2, image_size, image_size, 1), np.float32))
    assert tuple(output.shape) == (2, image_size, image_size, 1)
    assert 0.0 <= float(keras.ops.min(output)) and float(keras.ops.max(output)) <= 1.0


def test_reference_configuration_has_the_reference_parameter_count():
    assert build_unet(128, depth=4, filters=64).count_params() == 22_734_145


def test_filters_double_per_level_up_to_eight_times():
    model = build_unet(64, depth=5, filters=2)
    widths = sorted({layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)} - {1})
    assert widths == [2, 4, 8, 16]


def test_image_size_must_divide_by_the_depth():
    with pytest.raises(ValueError, match="divisible"):
        build_unet(100, depth=4)


def test_save_and_load_round_trip(tmp_path):
    model = build_unet(32, depth=2, filters=4)
    model.compile(optimizer="adam", loss=BceDiceLoss(0.5, 2.0), metrics=training_metrics())
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.loss.dice_weight == 2.0 and loaded.loss.bce_weight == 0.5


def masks(*rows):
    return np.array(rows, dtype=np.float32).reshape(len(rows), 2, 2, 1)


def test_dice_score_by_hand():
    truth = masks([1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0])
    prediction = masks([0.9, 0.2, 0.7, 0.1], [0, 0, 0, 0], [0.6, 0, 0, 0], [0.5, 0, 0, 0])
    # image 1: |A∩B| = 1, |A| = 2, |B| = 2 -> 0.5; both empty -> 1; truth empty, one predicted -> 0; exact -> 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dice_score(truth, prediction)), [0.5, 1.0, 0.0, 1.0])


def test_loss_by_hand():
    truth = masks([1, 0, 0, 0])
    prediction = masks([0.8, 0.2, 0.2, 0.2])
    bce = -(np.log(0.8) + 3 * np.log(0.8)) / 4
    dice = (2 * 0.8 + 1) / (1.4 + 1 + 1)
    np.testing.assert_allclose(float(BceDiceLoss(1.0, 0.0)(truth, prediction)), bce, rtol=1e-5)
    np.testing.assert_allclose(float(BceDiceLoss(0.0, 1.0)(truth, prediction)), 1 - dice, rtol=1e-5)
    np.testing.assert_allclose(float(BceDiceLoss(2.0, 3.0)(truth, prediction)), 2 * bce + 3 * (1 - dice), rtol=1e-5)
    empty = masks([0, 0, 0, 0])
    assert float(BceDiceLoss(0.0, 1.0)(empty, empty)) == pytest.approx(0.0)


def test_separable_convolutions_below_the_top_level_only():
    plain, separable = build_unet(32, depth=2, filters=4), build_unet(32, depth=2, filters=4, separable=True)
    kinds = {type(layer).__name__ for layer in separable.layers}
    assert "SeparableConv2D" in kinds
    full = [layer for layer in separable.layers if type(layer) is keras.layers.Conv2D and layer.kernel_size == (3, 3)]
    # the top level's two encoder and two decoder convolutions stay full ones, at the top level's width
    assert len(full) == 4 and {layer.filters for layer in full} == {4}
    for layer in separable.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            assert layer.filters in (8, 16)  # levels 1 and 2
    assert separable.count_params() < plain.count_params()
    output = separable(np.zeros((2, 32, 32, 1), np.float32))
    assert tuple(output.shape) == (2, 32, 32, 1)


def test_initial_weights_are_carried_over_from_a_saved_model(tmp_path):
    params = make_params({"data.image_size": 32, "model": {"depth": 2, "filters": 4}})
    keras.utils.set_random_seed(1)
    build_model(params).save(tmp_path / "source.keras")
    keras.utils.set_random_seed(2)
    model = build_model(params)
    source = keras.models.load_model(tmp_path / "source.keras", compile=False)
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), source.get_weights()))
    load_initial_weights(model, tmp_path / "source.keras")
    for mine, theirs in zip(model.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("other, message", [
    ({"model.filters": 8}, r"first differing layer 0 '.*' \(Conv2D, weights \[\(3, 3, 1, 8\).*set model.filters"),
    ({"model.depth": 3}, r"set model.depth, model.hypercolumns or model.classify"),
    ({"model.classify": True}, r"set model.depth, model.hypercolumns or model.classify"),
])
def test_a_model_of_another_architecture_names_the_layer_and_the_param(tmp_path, other, message):
    base = {"data.image_size": 32, "model.depth": 2, "model.filters": 4}
    build_model(make_params({**base, **other})).save(tmp_path / "source.keras")
    with pytest.raises(InitError, match=message):
        load_initial_weights(build_model(make_params(base)), tmp_path / "source.keras")


def test_a_missing_initial_model_names_the_param(tmp_path):
    model = build_model(make_params({"data.image_size": 32, "model.depth": 2, "model.filters": 4}))
    with pytest.raises(InitError, match=r"train.init_from: .*absent.keras: model file not found"):
        load_initial_weights(model, tmp_path / "absent.keras")
