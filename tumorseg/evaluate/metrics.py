"""Segmentation metrics on numpy masks.

Masks are arrays of shape (N, H, W); any nonzero value counts as tumour.

Empty-mask convention, per image: when the true mask and the predicted mask
are both empty the image scores IoU = Dice = 1 (perfect agreement); when
exactly one of them is empty it scores 0. Pooled scores follow the same rule
for the whole set.
"""

from collections.abc import Callable

import numpy as np

TIE_TOLERANCE = 1e-9


def _binary_pair(truth, pred):
    truth = np.asarray(truth).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} must have the same shape.")
    if truth.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), found {truth.ndim} dimensions {truth.shape}.")
    return truth, pred


def _ratio(numerator, denominator):
    """numerator / denominator, 1 where the denominator is 0 (both masks empty)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 1.0)


def _counts(truth, pred, axis):
    intersection = np.logical_and(truth, pred).sum(axis=axis)
    true_pixels = truth.sum(axis=axis)
    pred_pixels = pred.sum(axis=axis)
    return intersection, true_pixels, pred_pixels


def iou_per_image(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of each image, shape (N,); both empty -> 1, one empty -> 0."""
    truth, pred = _binary_pair(truth, pred)
    intersection, true_pixels, pred_pixels = _counts(truth, pred, axis=(1, 2))
    return _ratio(intersection, true_pixels + pred_pixels - intersection)


def dice_per_image(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Dice of each image, shape (N,); both empty -> 1, one empty -> 0."""
    truth, pred = _binary_pair(truth, pred)
    intersection, true_pixels, pred_pixels = _counts(truth, pred, axis=(1, 2))
    return _ratio(2 * intersection, true_pixels + pred_pixels)


def iou_pooled(truth: np.ndarray, pred: np.ndarray) -> float:
    """IoU of all pixels of all images together (large tumours weigh more)."""
    truth, pred = _binary_pair(truth, pred)
    intersection, true_pixels, pred_pixels = _counts(truth, pred, axis=None)
    return float(_ratio(intersection, true_pixels + pred_pixels - intersection))


def dice_pooled(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of all pixels of all images together (large tumours weigh more)."""
    truth, pred = _binary_pair(truth, pred)
    intersection, true_pixels, pred_pixels = _counts(truth, pred, axis=None)
    return float(_ratio(2 * intersection, true_pixels + pred_pixels))


# Two kinds of bad slice, each one name (docs/metrics.md, "Failures and poor slices"):
FAILURE_DICE = 0.1  # a failure: the tumour missed or another region segmented (the `failures` counts)
POOR_DICE = 0.5  # a poor slice: what the confidence score is fitted to find and review flags


def binarize(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Predicted mask: a pixel is tumour when its probability is >= threshold."""
    return np.asarray(probs) >= threshold


def threshold_grid(minimum: float, maximum: float, step: float) -> np.ndarray:
    """Thresholds from minimum to maximum inclusive, rounded to 6 decimals."""
    minimum, maximum, step = float(minimum), float(maximum), float(step)
    if step <= 0:
        raise ValueError(f"threshold step must be > 0, found {step}.")
    if not 0.0 <= minimum <= maximum <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= min <= max <= 1, found min {minimum}, max {maximum}.")
    count = int(np.floor((maximum - minimum) / step + 1e-9)) + 1
    return np.round(minimum + step * np.arange(count), 6)


def threshold_sweep(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                    postprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Mean per-image IoU and Dice at each threshold, each mask passed through `postprocess` if given.

    Returns {"threshold": (T,), "iou": (T,), "dice": (T,)}.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    ious = np.empty(len(thresholds))
    dices = np.empty(len(thresholds))
    for i, threshold in enumerate(thresholds):
        pred = binarize(probs, threshold)
        if postprocess is not None:
            pred = postprocess(pred)
        ious[i] = iou_per_image(truth, pred).mean()
        dices[i] = dice_per_image(truth, pred).mean()
    return {"threshold": thresholds, "iou": ious, "dice": dices}


def choose_threshold(thresholds: np.ndarray, scores: np.ndarray) -> float:
    """Threshold with the highest score.

    Ties (scores within 1e-9 of the best) go to the threshold nearest 0.5,
    then to the lower one: on a plateau the neutral sigmoid cut is kept.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if thresholds.shape != scores.shape or thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError(f"need equal, non-empty 1-D thresholds and scores, found {thresholds.shape}, {scores.shape}.")
    best = np.nanmax(scores)
    tied = thresholds[scores >= best - TIE_TOLERANCE]
    order = np.lexsort((tied, np.abs(tied - 0.5)))
    return float(tied[order[0]])


def bootstrap_ci(scores: np.ndarray, groups: np.ndarray, resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score, resampling groups.

    Groups (patients) are drawn with replacement; each draw scores the mean of
    the per-image scores of all slices of the drawn patients (a patient drawn
    twice counts twice). Returns (low, high), the (1 - level) / 2 and
    (1 + level) / 2 percentiles over `resamples` draws, seeded by `seed`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if scores.ndim != 1 or scores.shape != groups.shape or scores.size == 0:
        raise ValueError(f"need equal, non-empty 1-D scores and groups, found {scores.shape}, {groups.shape}.")
    if int(resamples) < 1:
        raise ValueError(f"bootstrap resamples must be >= 1, found {resamples}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), found {level}.")
    _, codes = np.unique(groups, return_inverse=True)
    sums = np.bincount(codes, weights=scores)
    counts = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(int(resamples), len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)
