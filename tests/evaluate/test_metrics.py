import numpy as np
import pytest

from tumorseg.evaluate import metrics


def _masks(*pixel_lists, size=3):
    """(N, size, size) uint8 masks with the listed (row, column) pixels set."""
    out = np.zeros((len(pixel_lists), size, size), dtype=np.uint8)
    for i, pixels in enumerate(pixel_lists):
        for row, column in pixels:
            out[i, row, column] = 1
    return out


BLOCK = [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.fixture
def pair():
    # image 0: truth 4 px, prediction 2 px inside it  -> IoU 2/4, Dice 4/6
    # image 1: truth 1 px, prediction 1 px elsewhere  -> IoU 0, Dice 0
    truth = _masks(BLOCK, [(2, 2)])
    pred = _masks([(0, 0), (0, 1)], [(2, 0)])
    return truth, pred


def test_per_image_scores_by_hand(pair):
    truth, pred = pair
    np.testing.assert_allclose(metrics.iou_per_image(truth, pred), [0.5, 0.0])
    np.testing.assert_allclose(metrics.dice_per_image(truth, pred), [2 / 3, 0.0])


def test_pooled_scores_differ_from_mean_of_per_image(pair):
    truth, pred = pair
    # pooled: intersection 2, truth 5, prediction 3, union 6
    assert metrics.iou_pooled(truth, pred) == pytest.approx(2 / 6)
    assert metrics.dice_pooled(truth, pred) == pytest.approx(4 / 8)
    assert metrics.iou_per_image(truth, pred).mean() == pytest.approx(0.25)
    assert metrics.dice_per_image(truth, pred).mean() == pytest.approx(1 / 3)


def test_empty_mask_convention():
    truth = _masks([], [], BLOCK)
    pred = _masks([], BLOCK, [])
    np.testing.assert_array_equal(metrics.iou_per_image(truth, pred), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(metrics.dice_per_image(truth, pred), [1.0, 0.0, 0.0])
    empty = _masks([], [])
    assert metrics.iou_pooled(empty, empty) == 1.0
    assert metrics.dice_pooled(empty, empty) == 1.0


def test_perfect_prediction_scores_one():
    truth = _masks(BLOCK, [(2, 2)])
    np.testing.assert_array_equal(metrics.dice_per_image(truth, truth), [1.0, 1.0])
    assert metrics.iou_pooled(truth, truth) == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        metrics.iou_per_image(np.zeros((1, 3, 3)), np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.dice_per_image(np.zeros((3, 3)), np.zeros((3, 3)))


def test_threshold_grid_is_inclusive_and_clean():
    grid = metrics.threshold_grid(0.05, 0.95, 0.05)
    assert len(grid) == 19
    assert grid[0] == 0.05 and grid[-1] == 0.95 and 0.15 in grid
    with pytest.raises(ValueError):
        metrics.threshold_grid(0.5, 0.4, 0.05)
    with pytest.raises(ValueError):
        metrics.threshold_grid(0.1, 0.9, 0.0)


def test_threshold_sweep_by_hand():
    truth = _masks(BLOCK)
    probs = np.zeros((1, 3, 3), dtype=np.float32)
    probs[0, 0, 0], probs[0, 0, 1], probs[0, 1, 0], probs[0, 1, 1] = 0.9, 0.9, 0.6, 0.6
    probs[0, 2, 2] = 0.3  # false positive at low thresholds
    sweep = metrics.threshold_sweep(truth, probs, [0.2, 0.5, 0.8, 0.95])
    np.testing.assert_allclose(sweep["iou"], [4 / 5, 1.0, 2 / 4, 0.0])
    np.testing.assert_allclose(sweep["dice"], [8 / 9, 1.0, 4 / 6, 0.0])


def test_choose_threshold_ties_go_nearest_half_then_lower():
    thresholds = np.round(np.arange(1, 10) / 10, 6)
    assert metrics.choose_threshold(thresholds, [0, 1, 2, 3, 2, 1, 0, 0, 0]) == 0.4
    assert metrics.choose_threshold(thresholds, [0, 5, 5, 0, 0, 0, 0, 0, 0]) == 0.3
    assert metrics.choose_threshold(thresholds, [0, 0, 7, 7, 0, 7, 0, 0, 0]) == 0.4
    assert metrics.choose_threshold(thresholds, [1] * 9) == 0.5


def _shifted_probs(truth, tumour, distractor):
    """Tumour pixels at `tumour`, one extra pixel per image at `distractor`."""
    probs = truth.astype(np.float32) * tumour
    probs[:, 2, 2] = distractor
    return probs


def test_selection_uses_validation_not_test():
    truth = _masks(BLOCK, BLOCK)
    val_probs = _shifted_probs(truth, tumour=0.33, distractor=0.22)  # best: 0.25 or 0.30
    test_probs = _shifted_probs(truth, tumour=0.83, distractor=0.72)  # best: 0.75 or 0.80
    grid = metrics.threshold_grid(0.05, 0.95, 0.05)
    chosen = metrics.choose_threshold(grid, metrics.threshold_sweep(truth, val_probs, grid)["iou"])
    test_best = metrics.choose_threshold(grid, metrics.threshold_sweep(truth, test_probs, grid)["iou"])
    assert chosen == 0.3
    assert test_best == 0.75


def test_bootstrap_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 4)
    scores = np.clip(rng.normal(0.8, 0.1, size=len(groups)), 0, 1)
    low, high = metrics.bootstrap_ci(scores, groups, resamples=500, seed=1)
    assert low <= scores.mean() <= high
    assert low < high
    assert metrics.bootstrap_ci(scores, groups, resamples=500, seed=1) == (low, high)


def test_bootstrap_narrows_with_more_patients():
    rng = np.random.default_rng(0)

    def width(patients):
        groups = np.repeat(np.arange(patients), 3)
        scores = np.clip(rng.normal(0.7, 0.2, size=len(groups)), 0, 1)
        low, high = metrics.bootstrap_ci(scores, groups, resamples=1000, seed=3)
        return high - low

    assert width(200) < width(8) / 2


def test_bootstrap_weights_patients_by_their_slices():
    # patient "a": three slices scoring 1, patient "b": one slice scoring 0.
    # A resample is aa -> 1, ab -> 3/4 or bb -> 0; nothing else is possible.
    scores = np.array([1.0, 1.0, 1.0, 0.0])
    groups = np.array(["a", "a", "a", "b"])
    # ab (probability 1/2) is the middle: the 40th and 60th percentiles are 3/4
    assert metrics.bootstrap_ci(scores, groups, resamples=400, seed=0, level=0.2) == pytest.approx((0.75, 0.75))
    assert metrics.bootstrap_ci(scores, groups, resamples=400, seed=0, level=0.9) == pytest.approx((0.0, 1.0))
    assert metrics.bootstrap_ci([0.6, 0.8], ["p", "p"], resamples=10, seed=0) == pytest.approx((0.7, 0.7))


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError):
        metrics.bootstrap_ci([0.5], ["a"], resamples=0, seed=0)
    with pytest.raises(ValueError):
        metrics.bootstrap_ci([0.5, 0.6], ["a"], resamples=10, seed=0)
