"""Post-processing of hand-made masks with known components, and test-time augmentation with toy models."""

import keras
import numpy as np
import pytest

from tumorseg.errors import InputError
from tumorseg.evaluate.postprocess import MIN_SIZE_FRACTIONS, PostProcess, candidates
from tumorseg.model.probabilities import predict_probabilities


def three_blobs():
    """A 20x20 mask: blob A 12 pixels, blob B 4 pixels (touching A only diagonally: same component), blob C 2."""
    mask = np.zeros((20, 20), bool)
    mask[2:5, 2:6] = True  # A: 3x4 = 12
    mask[5:7, 6:8] = True  # B: 2x2 = 4, its corner (5, 6) touches A's corner (4, 5) diagonally
    mask[15, 15:17] = True  # C: 2
    return mask


def test_none_returns_the_mask():
    mask = three_blobs()
    np.testing.assert_array_equal(PostProcess().apply(mask), mask)


def test_largest_keeps_the_eight_connected_largest_component():
    kept = PostProcess("largest").apply(three_blobs())
    assert kept.sum() == 16  # A and B are one component under 8-connectivity
    assert not kept[15].any()


def test_largest_of_two_equal_components_keeps_one():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = mask[6:8, 6:8] = True
    kept = PostProcess("largest").apply(mask)
    assert kept.sum() == 4 and kept[1, 1]


@pytest.mark.parametrize("fraction, expected", [(0.004, 18), (0.006, 16), (0.5, 16)])
def test_min_size_drops_components_below_a_fraction_of_the_area(fraction, expected):
    # 400 pixels: 0.004 keeps components of >= 1.6 pixels (all), 0.006 of >= 2.4 (drops C);
    # 0.5 would drop everything, but the largest component is always kept
    assert PostProcess("min_size", fraction).apply(three_blobs()).sum() == expected


def test_a_stack_is_cleaned_slice_by_slice_and_empty_masks_stay_empty():
    stack = np.stack([three_blobs(), np.zeros((20, 20), bool), three_blobs().T])
    kept = PostProcess("largest").apply(stack)
    assert kept.shape == stack.shape
    assert kept.sum(axis=(1, 2)).tolist() == [16, 0, 16]
    # components never join across slices: each slice's own largest is kept
    np.testing.assert_array_equal(kept[2], PostProcess("largest").apply(three_blobs().T))


def test_candidates_and_bad_settings():
    assert [str(c) for c in candidates("auto")] == ["none", "largest", *(f"min_size {f:g}" for f in MIN_SIZE_FRACTIONS)]
    assert candidates("largest") == [PostProcess("largest")]
    with pytest.raises(ValueError, match="evaluate.postprocess"):
        candidates("biggest")
    with pytest.raises(ValueError, match="min_fraction"):
        PostProcess("min_size", 1.5)


# ------------------------------------------------------------------ test-time augmentation


def conv_model(size, kernel):
    """A model that convolves its input with a fixed 3x3 kernel."""
    model = keras.Sequential([keras.Input((size, size, 1)), keras.layers.Conv2D(1, 3, padding="same", use_bias=False)])
    model.layers[0].set_weights([np.asarray(kernel, np.float32)[:, :, None, None]])
    return model


def test_tta_leaves_a_flip_equivariant_model_unchanged():
    images = np.random.default_rng(0).random((5, 16, 16), dtype=np.float32)
    model = conv_model(16, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])  # symmetric kernel: commutes with flips
    plain = predict_probabilities(model, images, np.arange(5), batch_size=2)
    np.testing.assert_allclose(predict_probabilities(model, images, np.arange(5), 2, "hflip"), plain, atol=1e-5)


def test_tta_averages_the_flipped_predictions_flipped_back():
    images = np.random.default_rng(1).random((3, 12, 12), dtype=np.float32)
    model = conv_model(12, [[0, 0, 0], [0, 0, 1], [0, 0, 0]])  # output(x) = input(x + 1 column): not equivariant
    plain = predict_probabilities(model, images, np.arange(3))
    mirrored = predict_probabilities(model, images[:, :, ::-1].copy(), np.arange(3))[:, :, ::-1]
    assert not np.allclose(plain, mirrored)
    np.testing.assert_allclose(predict_probabilities(model, images, np.arange(3), tta="hflip"),
                               (plain + mirrored) / 2, atol=1e-6)


def test_unknown_tta_is_a_named_error():
    model = conv_model(8, np.ones((3, 3)))
    with pytest.raises(InputError, match="evaluate.tta"):
        predict_probabilities(model, np.zeros((1, 8, 8), np.float32), np.arange(1), tta="rotate")
