"""The Lovasz hinge against brute-force evaluations of the Lovasz extension of the Jaccard loss."""

import itertools

import keras
import numpy as np
import pytest

from tumorseg.model.losses import (
    BceDiceLoss,
    LovaszSchedule,
    lovasz_hinge,
    probability_logits,
)
from tumorseg.model.unet import build_unet


def jaccard_loss_of_errors(truth, wrong):
    """Delta_J(E): Jaccard loss of the prediction that is wrong exactly on the pixel set `wrong`."""
    prediction = truth ^ wrong
    union = np.sum(truth | prediction)
    return 0.0 if union == 0 else 1.0 - np.sum(truth & prediction) / union


def hinge_errors(truth, logits):
    return np.maximum(0.0, 1.0 - logits * np.where(truth, 1.0, -1.0))


def lovasz_extension_by_level_sets(truth, logits):
    """Choquet integral: the integral over t >= 0 of Delta_J({pixels with error >= t}) dt."""
    truth, errors = truth.ravel(), hinge_errors(truth, logits).ravel()
    total, previous = 0.0, 0.0
    for level in np.unique(errors[errors > 0]):
        total += (level - previous) * jaccard_loss_of_errors(truth, errors >= level)
        previous = level
    return total


def lovasz_extension_by_permutations(truth, logits):
    """Delta_J is submodular, so its Lovasz extension is the maximum over all pixel orders of
    sum_k error[order[k]] * (Delta_J(first k+1 pixels) - Delta_J(first k pixels))."""
    truth, errors = truth.ravel(), hinge_errors(truth, logits).ravel()
    best = -np.inf
    for order in itertools.permutations(range(truth.size)):
        wrong = np.zeros(truth.size, bool)
        value, before = 0.0, 0.0
        for pixel in order:
            wrong[pixel] = True
            after = jaccard_loss_of_errors(truth, wrong)
            value += errors[pixel] * (after - before)
            before = after
        best = max(best, value)
    return best


def tiny_cases(count=12, seed=0):
    """2x3 masks (including empty and full ones) with logits, some of them tied or far beyond the margin."""
    rng = np.random.default_rng(seed)
    truths = rng.random((count, 2, 3)) < 0.5
    truths[0], truths[1] = False, True
    logits = rng.normal(0.0, 1.5, (count, 2, 3))
    logits[2] = np.round(logits[2])  # ties
    logits[3] = np.where(truths[3], 3.0, -3.0)  # every pixel right beyond the margin: loss 0
    return truths, logits.astype(np.float32)


def implementation(truths, logits):
    return keras.ops.convert_to_numpy(lovasz_hinge(truths[..., None].astype(np.float32), logits[..., None]))


def test_lovasz_hinge_equals_the_lovasz_extension_as_an_integral_over_level_sets():
    truths, logits = tiny_cases()
    expected = [lovasz_extension_by_level_sets(t, z) for t, z in zip(truths, logits)]
    np.testing.assert_allclose(implementation(truths, logits), expected, rtol=1e-5, atol=1e-6)
    assert expected[3] == 0.0


def test_lovasz_hinge_equals_the_maximum_over_pixel_orders():
    truths, logits = tiny_cases(count=5, seed=1)
    expected = [lovasz_extension_by_permutations(t, z) for t, z in zip(truths, logits)]
    np.testing.assert_allclose(implementation(truths, logits), expected, rtol=1e-5, atol=1e-6)


def test_logits_of_probabilities_are_clipped():
    z = np.array([-5.0, -0.5, 0.0, 2.0, 8.0], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probability_logits(1 / (1 + np.exp(-z)))), z, atol=2e-3)
    extremes = keras.ops.convert_to_numpy(probability_logits(np.array([0.0, 1.0], np.float32)))
    assert extremes[0] < -15 and 15 < extremes[1] < 17  # float32 1 - 1e-7 rounds: about +-16


def test_loss_adds_the_weighted_lovasz_hinge():
    truths, logits = tiny_cases(count=4)
    truths = truths[..., None].astype(np.float32)
    probabilities = (1 / (1 + np.exp(-logits)))[..., None]
    base = keras.ops.convert_to_numpy(BceDiceLoss(2.0, 1.0)(truths, probabilities))
    with_lovasz = keras.ops.convert_to_numpy(BceDiceLoss(2.0, 1.0, lovasz_weight=0.5)(truths, probabilities))
    lovasz = implementation(truths[..., 0], logits).mean()
    assert float(with_lovasz) == pytest.approx(float(base) + 0.5 * lovasz, rel=1e-4)
    warming_up = BceDiceLoss(2.0, 1.0, lovasz_weight=0.5, lovasz_from_epoch=1)(truths, probabilities)
    assert float(warming_up) == pytest.approx(float(base))


class RecordLovaszWeight(keras.callbacks.Callback):
    def __init__(self, loss):
        super().__init__()
        self.loss, self.weights = loss, []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(float(keras.ops.convert_to_numpy(self.loss.active_lovasz_weight)))


def test_lovasz_switches_on_after_the_warm_up_and_survives_saving(tmp_path):
    x = np.random.default_rng(0).random((4, 16, 16, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    model = build_unet(16, depth=1, filters=2)
    loss = BceDiceLoss(lovasz_weight=0.5, lovasz_from_epoch=2)
    model.compile(optimizer="adam", loss=loss)
    record = RecordLovaszWeight(loss)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[LovaszSchedule(loss), record])
    assert record.weights == [0.0, 0.0, 0.5]
    # the compiled step reads the variable: changing it changes the loss without retracing
    loss.start_epoch(0)
    without = model.evaluate(x, y, verbose=0)
    loss.start_epoch(2)
    assert model.evaluate(x, y, verbose=0) > without + 1e-3

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert (loaded.loss.lovasz_weight, loaded.loss.lovasz_from_epoch) == (0.5, 2)
    assert float(keras.ops.convert_to_numpy(loaded.loss.active_lovasz_weight)) == 0.0
    loaded.loss.start_epoch(5)
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-5)
