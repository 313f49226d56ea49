"""An ensemble is one Keras model whose outputs are its members' mean; stored in float16, exported to ONNX."""

import keras
import numpy as np
import pytest

from tumorseg.errors import InputError
from tumorseg.model.ensemble import ensemble, save_half_precision
from tumorseg.model.load import load_model
from tumorseg.model.probabilities import predict
from tumorseg.model.unet import build_unet
from tumorseg.serve import export

SIZE = 32


def members(tmp_path, classify=False, count=2):
    """`count` tiny U-Nets with different seeded weights, saved and loaded back as the release loads them."""
    found = []
    for seed in range(count):
        keras.utils.set_random_seed(seed)
        build_unet(SIZE, depth=2, filters=4, classify=classify).save(tmp_path / f"m{seed}.keras")
        found.append(load_model(tmp_path / f"m{seed}.keras"))
    return found


@pytest.fixture
def images():
    return np.random.default_rng(0).random((5, SIZE, SIZE), dtype=np.float32)


@pytest.mark.parametrize("classify", [False, True])
def test_the_ensemble_is_the_mean_of_its_members(tmp_path, images, classify):
    models = members(tmp_path, classify)
    alone = [predict(model, images, np.arange(5), tta="hflip") for model in models]
    together = predict(ensemble(models), images, np.arange(5), tta="hflip")
    np.testing.assert_allclose(together.probabilities, np.mean([a.probabilities for a in alone], axis=0), atol=1e-6)
    assert np.abs(alone[0].probabilities - alone[1].probabilities).max() > 0.01  # the members differ
    if classify:
        np.testing.assert_allclose(together.types, np.mean([a.types for a in alone], axis=0), atol=1e-6)
    else:
        assert together.types is None


def test_half_precision_storage_halves_the_file_and_keeps_the_outputs(tmp_path, images):
    combined = ensemble(members(tmp_path, count=3))
    combined.save(tmp_path / "full.keras")
    save_half_precision(combined, tmp_path / "half.keras")
    assert (tmp_path / "half.keras").stat().st_size < 0.6 * (tmp_path / "full.keras").stat().st_size
    reloaded = load_model(tmp_path / "half.keras")  # through the archive checks, as the segmenter loads it
    assert all(weight.dtype == "float32" for weight in reloaded.weights)
    full = predict(combined, images, np.arange(5)).probabilities
    half = predict(reloaded, images, np.arange(5)).probabilities
    assert 0 < np.abs(full - half).max() < 1e-3


def test_members_of_two_recipes_are_refused(tmp_path):
    keras.utils.set_random_seed(0)
    other = build_unet(SIZE * 2, depth=2, filters=4)
    with pytest.raises(InputError, match="an ensemble averages models of one recipe"):
        ensemble([members(tmp_path, count=1)[0], other])
    with pytest.raises(InputError, match="at least two models"):
        ensemble(members(tmp_path, count=1))


def test_the_onnx_export_of_an_ensemble_agrees_with_keras(tmp_path, images):
    combined = ensemble(members(tmp_path, classify=True))
    export.export_onnx(combined, tmp_path / "ensemble.onnx")
    reference = predict(combined, images, np.arange(5)).probabilities
    np.testing.assert_allclose(export.run_onnx(tmp_path / "ensemble.onnx", images), reference, atol=1e-4)
