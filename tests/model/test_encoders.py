"""Pretrained-encoder U-Nets and hypercolumns: shapes, skip wiring, preprocessing, weights files, bad input."""

import dataclasses

import keras
import numpy as np
import pytest

from tests.helpers import make_params
from tumorseg.model.build import build_model, compile_model, make_loss
from tumorseg.model.encoders import ENCODERS, IMAGENET_STDDEV_RGB, build_encoder_unet
from tumorseg.model.unet import build_unet

SIZE = 64


def images(count=2, size=SIZE):
    return np.random.default_rng(0).random((count, size, size, 1), dtype=np.float32)


def concatenations(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]


@pytest.mark.parametrize("encoder, skips", [("vgg16", 4), ("resnet50", 3), ("efficientnetb0", 3), ("efficientnet_lite0", 3)])
def test_encoder_unet_predicts_masks_with_skips_from_every_level(encoder, skips):
    model = build_encoder_unet(SIZE, encoder, depth=4, filters=4, encoder_weights="none")
    x = images()
    output = model.predict(x, verbose=0)
    assert output.shape == (2, SIZE, SIZE, 1) and 0.0 <= output.min() and output.max() <= 1.0

    contracting = model.get_layer("encoder")
    sizes = sorted({int(shape[1]) for shape in (out.shape for out in contracting.outputs)}, reverse=True)
    levels = [level for level, name in enumerate(ENCODERS[encoder].feature_layers[:5]) if name]
    assert sizes == [SIZE // 2**level for level in levels]
    skip_concatenations = [layer for layer in concatenations(model) if layer.name != "grey_to_rgb"]
    assert len(skip_concatenations) == skips  # resnet50 and efficientnetb0: no full-resolution map

    preprocessed = keras.Model(model.inputs, model.get_layer("encoder_preprocess").output)(x)
    expected = ENCODERS[encoder].preprocess_input(np.repeat(x * 255.0, 3, axis=-1))
    np.testing.assert_allclose(np.asarray(preprocessed), expected, rtol=1e-5, atol=1e-3)


def test_hypercolumns_feed_every_decoder_level_to_the_output():
    plain, columns = build_unet(32, depth=3, filters=2), build_unet(32, depth=3, filters=2, hypercolumns=True)
    stacked = columns.get_layer("hypercolumns").output
    assert tuple(stacked.shape) == (None, 32, 32, 2 + 4 + 8)
    assert columns.get_layer("mask").count_params() == 14 + 1
    assert columns.count_params() - plain.count_params() == 12
    assert columns.predict(images(size=32), verbose=0).shape == (2, 32, 32, 1)


def test_a_full_resolution_skip_gives_the_top_level_the_image_at_full_size():
    without = build_encoder_unet(SIZE, "efficientnet_lite0", depth=4, filters=4, encoder_weights="none")
    model = build_encoder_unet(SIZE, "efficientnet_lite0", depth=4, filters=4, encoder_weights="none",
                               full_resolution_skip=True)
    full_size = [layer for layer in concatenations(model) if layer.name != "grey_to_rgb"
                 and [int(tensor.shape[1]) for tensor in layer.input] == [SIZE, SIZE]]
    assert len(full_size) == 1 and len(concatenations(model)) == len(concatenations(without)) + 1
    # the top decoder level sees a conv block of the grey image: two 3x3 convolutions of 4 filters
    assert model.count_params() - without.count_params() == (1 * 9 * 4 + 4) + (4 * 9 * 4 + 4) + 2 * 4 * 4 + 4 * 9 * 4
    assert model.predict(images(), verbose=0).shape == (2, SIZE, SIZE, 1)
    params = make_params({"data.image_size": SIZE, "model": {"depth": 4, "filters": 4, "full_resolution_skip": True,
                                                              "encoder": "efficientnet_lite0", "encoder_weights": "none"}})
    assert build_model(params).count_params() == model.count_params()


def test_a_full_resolution_skip_is_refused_where_the_model_has_one():
    with pytest.raises(ValueError, match="block1_conv2"):
        build_encoder_unet(SIZE, "vgg16", depth=2, filters=4, encoder_weights="none", full_resolution_skip=True)
    with pytest.raises(ValueError, match="model.full_resolution_skip"):
        make_params({"model.full_resolution_skip": True})


def test_with_encoder_lr_factor_the_encoder_steps_that_much_less_than_the_decoder():
    params = make_params({"data.image_size": 32, "train.encoder_lr_factor": 0.1,
                          "model": {"depth": 2, "filters": 2, "encoder": "efficientnet_lite0", "encoder_weights": "none"}})
    model = compile_model(build_model(params), params, make_loss(params.train.loss), 1.0e-3)
    encoder = {variable.path for variable in model.get_layer("encoder").trainable_variables}
    before = [keras.ops.convert_to_numpy(variable) for variable in model.trainable_variables]
    x = images(4, 32)
    model.train_on_batch(x, (x > 0.5).astype(np.float32))
    steps = {True: [], False: []}
    for variable, old in zip(model.trainable_variables, before):
        steps[variable.path in encoder].append(np.abs(keras.ops.convert_to_numpy(variable) - old).max())
    # Adam's first step moves each weight with a gradient by the learning rate itself
    assert len(steps[True]) > 10 and len(steps[False]) > 10
    np.testing.assert_allclose(max(steps[True]), 1.0e-4, rtol=1e-3)
    np.testing.assert_allclose(max(steps[False]), 1.0e-3, rtol=1e-3)
    plain = params.replaced({"train.encoder_lr_factor": 1.0})
    assert type(compile_model(build_model(plain), plain, make_loss(plain.train.loss), 1.0e-3).optimizer) \
        is keras.optimizers.Adam


def test_build_model_follows_params():
    params = make_params({"data.image_size": 32, "model": {"depth": 2, "filters": 4, "hypercolumns": True,
                                                            "encoder": "vgg16", "encoder_weights": "none"}})
    model = build_model(params)
    assert model.name == "vgg16_unet" and model.get_layer("hypercolumns") is not None
    params = params.replaced({"model.encoder": "none", "model.hypercolumns": False})
    assert build_model(params).name == "unet"


def test_encoder_model_saves_and_loads_without_custom_code(tmp_path):
    model = build_encoder_unet(32, "vgg16", depth=2, filters=4, encoder_weights="none")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(images(size=32), verbose=0), model.predict(images(size=32), verbose=0))


def test_encoder_batch_norms_use_the_model_momentum(tmp_path):
    model = build_encoder_unet(32, "efficientnetb0", depth=2, filters=4, batchnorm_momentum=0.7, encoder_weights="none")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    norms = [layer for layer in loaded.get_layer("encoder").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) >= 5 and {layer.momentum for layer in norms} == {0.7}


def test_weights_file_is_loaded_into_the_encoder(tmp_path):
    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    normalization = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    # as in the ImageNet file: the RGB standard deviations stored as the variance
    normalization.adapt_mean.assign([0.485, 0.456, 0.406])
    normalization.adapt_variance.assign(IMAGENET_STDDEV_RGB)
    source.save_weights(tmp_path / "efficientnetb0.weights.h5")
    model = build_encoder_unet(64, "efficientnetb0", depth=2, filters=4,
                               encoder_weights=str(tmp_path / "efficientnetb0.weights.h5"))
    encoder = model.get_layer("encoder")
    np.testing.assert_array_equal(encoder.get_layer("stem_conv").get_weights()[0],
                                  source.get_layer("stem_conv").get_weights()[0])
    loaded = next(layer for layer in encoder.layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.adapt_variance), IMAGENET_STDDEV_RGB**2, rtol=1e-6)


@pytest.mark.parametrize(
    "image_size, encoder, depth, message",
    [
        (64, "resnet50", 6, "downsamples 5 times"),
        (64, "vgg16", 0, "between 1 and 5"),
        (16, "vgg16", 2, "too small"),
        (48, "efficientnetb0", 5, "divisible"),
    ],
)
def test_bad_encoder_settings_are_rejected(image_size, encoder, depth, message):
    with pytest.raises(ValueError, match=message):
        build_encoder_unet(image_size, encoder, depth=depth, filters=4, encoder_weights="none")


def test_missing_or_foreign_weights_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        build_encoder_unet(32, "vgg16", depth=2, filters=4, encoder_weights=str(tmp_path / "missing.h5"))
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        tmp_path / "vgg16.weights.h5"
    )
    with pytest.raises(ValueError, match="does not hold efficientnetb0 no-top weights"):
        build_encoder_unet(32, "efficientnetb0", depth=2, filters=4, encoder_weights=str(tmp_path / "vgg16.weights.h5"))


def test_offline_a_keras_applications_encoder_names_the_offline_one(monkeypatch):
    def no_network(**kwargs):
        if kwargs.get("weights") == "imagenet":
            raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")
        return keras.applications.VGG16(**kwargs)

    monkeypatch.setitem(ENCODERS, "vgg16", dataclasses.replace(ENCODERS["vgg16"], application=no_network))
    with pytest.raises(ValueError, match="could not be downloaded .* Offline, use model.encoder efficientnet_lite0"):
        build_encoder_unet(32, "vgg16", depth=2, filters=4, encoder_weights="imagenet")
