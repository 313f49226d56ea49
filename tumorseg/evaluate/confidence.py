"""How far to trust each predicted mask: a confidence score per slice, fitted on validation.

The features of a slice, at the model's resolution, with the threshold and post-processing evaluate chose:
  mean_inside       mean probability inside the predicted mask (0 when it is empty)
  uncertainty       summed binary entropy (bits) of the probability map per predicted pixel (the area plus one)
  agreement         soft Dice between the plain and the mirrored pass (1 without test-time flips)
  log_area          log(1 + predicted pixels per 10,000 pixels of the image)
  components        connected regions of the predicted mask
  type_probability  the type head's top probability (1 for a model without the type head)

The score is a logistic regression of "segmented well" (Dice >= POOR_DICE, tumorseg.evaluate.metrics) on these features, fitted
on the validation slices only (scikit-learn, standardised features); it lies in (0, 1), higher is more
trustworthy. A slice scoring at most `review_threshold` is flagged for review: the smallest threshold
at which validation shows, with 95% confidence, that at least CATCH of the poor slices are flagged (the
one-sided Clopper-Pearson lower bound of the share caught reaches CATCH), since validation's poor slices are
few: a threshold that catches exactly CATCH of them catches fewer on test (docs/results.md). Evaluate,
render_samples and predict all score through tumorseg.evaluate.choices.Choices.score, which makes the
masks the same way: a slice gets the same score wherever it is predicted (tested end to end).
"""

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from tumorseg.evaluate.metrics import POOR_DICE


FEATURES = ("mean_inside", "uncertainty", "agreement", "log_area", "components", "type_probability")
CATCH = 0.8  # share of the poor slices (Dice < POOR_DICE) the review threshold aims to flag
CATCH_CONFIDENCE = 0.95  # confidence, on validation, that the threshold flags at least CATCH of the poor slices
REFERRAL_FRACTIONS = (0.05, 0.10, 0.20)
EPSILON = 1e-6


def slice_features(probabilities: np.ndarray, masks: np.ndarray, agreement: np.ndarray,
                   types: np.ndarray | None = None) -> np.ndarray:
    """(n, len(FEATURES)) float64 of (n, S, S) probability maps, their predicted masks, the flips'
    agreement (n,) and the (n, 3) type probabilities or None (see the module docstring)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    n = len(probabilities)
    flat, flat_masks = probabilities.reshape(n, -1), masks.reshape(n, -1)
    area = flat_masks.sum(axis=1)
    mean_inside = np.where(area > 0, (flat * flat_masks).sum(axis=1) / np.maximum(area, 1), 0.0)
    p = np.clip(flat, EPSILON, 1.0 - EPSILON)
    entropy = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p)).sum(axis=1)
    components = np.array([ndimage.label(mask)[1] for mask in masks], dtype=np.float64)
    top_type = np.ones(n) if types is None else np.asarray(types, dtype=np.float64).max(axis=1)
    return np.column_stack([
        mean_inside,
        entropy / (area + 1.0),
        np.asarray(agreement, dtype=np.float64),
        np.log1p(1e4 * area / flat.shape[1]),
        components,
        top_type,
    ])


@dataclass(frozen=True)
class ConfidenceModel:
    """Logistic-regression weights on the raw FEATURES, its bias and the review threshold.

    `fitted` is False for the fallback used when validation held no poor slice (or nothing but poor slices):
    the score is then the sigmoid of mean_inside alone.
    """

    weights: dict[str, float] = field(default_factory=lambda: {"mean_inside": 1.0})
    bias: float = 0.0
    review_threshold: float = 0.0
    fitted: bool = False

    def __post_init__(self):
        unknown = set(self.weights) - set(FEATURES)
        if unknown:
            raise ValueError(f"confidence weights of unknown features {sorted(unknown)}; known: {', '.join(FEATURES)}.")
        object.__setattr__(self, "weights", {name: float(self.weights.get(name, 0.0)) for name in FEATURES})

    def score(self, features: np.ndarray) -> np.ndarray:
        """Confidence in (0, 1) of each row of (n, len(FEATURES)) features."""
        weights = np.array([self.weights[name] for name in FEATURES])
        logits = np.asarray(features, dtype=np.float64) @ weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -500, 500)))

    def flags(self, confidence: np.ndarray) -> np.ndarray:
        """True where a slice should be reviewed by a person: its confidence is at most the review
        threshold, or not a number (a slice the model could not score is never a confident answer)."""
        return ~(np.asarray(confidence, dtype=np.float64) > self.review_threshold)

    @classmethod
    def fit(cls, features: np.ndarray, dice: np.ndarray, seed: int = 0) -> "ConfidenceModel":
        """Fit on validation features and Dice; the review threshold catches CATCH of its poor slices."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        good = np.asarray(dice) >= POOR_DICE
        model = cls()
        if 0 < good.sum() < len(good):
            scaler = StandardScaler().fit(features)
            regression = LogisticRegression(random_state=seed).fit(scaler.transform(features), good)
            weights = regression.coef_[0] / scaler.scale_
            bias = float(regression.intercept_[0] - (weights * scaler.mean_).sum())
            model = cls({name: float(w) for name, w in zip(FEATURES, weights)}, bias, fitted=True)
        return cls(model.weights, model.bias, review_threshold(model.score(features), ~good), model.fitted)

    def to_dict(self) -> dict:
        """The model as evaluate records it in the model folder's choices.json (unrounded, so predict scores
        exactly as evaluate did)."""
        return {"fitted": self.fitted, "bias": self.bias, "weights": dict(self.weights),
                "review_threshold": self.review_threshold}

    @classmethod
    def from_dict(cls, stored: dict) -> "ConfidenceModel":
        """The model recorded by to_dict; ValueError, KeyError or TypeError where it is not one."""
        weights = stored["weights"]
        if not isinstance(weights, dict) or set(weights) != set(FEATURES):
            raise ValueError(f"confidence weights must name the features {', '.join(FEATURES)}")
        numbers = [*weights.values(), stored["bias"], stored["review_threshold"]]
        if any(isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value)
               for value in numbers):
            raise ValueError("confidence weights, bias and review_threshold must be finite numbers")
        if not isinstance(stored["fitted"], bool):
            raise ValueError("confidence fitted must be true or false")
        return cls({name: float(w) for name, w in weights.items()}, float(stored["bias"]),
                   float(stored["review_threshold"]), stored["fitted"])


def review_threshold(confidence: np.ndarray, poor: np.ndarray, catch: float = CATCH,
                     level: float = CATCH_CONFIDENCE) -> float:
    """The smallest score s such that flagging confidence <= s catches k of the n poor slices with the
    one-sided Clopper-Pearson lower bound of k/n at `level` at least `catch`; the highest poor slice's score
    (every poor slice flagged) when n is too small for any k to reach it, 0 when there is no poor slice."""
    from scipy.stats import beta

    scores = np.sort(np.asarray(confidence)[np.asarray(poor, dtype=bool)])
    n = len(scores)
    for k in range(math.ceil(catch * n), n + 1):
        if k and beta.ppf(1 - level, k, n - k + 1) >= catch:
            return float(scores[k - 1])
    return float(scores[-1]) if n else 0.0


# ------------------------------------------------------------ how well it works


def poor_auroc(confidence: np.ndarray, dice: np.ndarray) -> float:
    """AUROC of low confidence for detecting poor slices (Dice < POOR_DICE); NaN without both kinds."""
    from sklearn.metrics import roc_auc_score

    poor = np.asarray(dice) < POOR_DICE
    if poor.all() or not poor.any():
        return float("nan")
    return float(roc_auc_score(poor, -np.asarray(confidence, dtype=np.float64)))


def kept_dice(confidence: np.ndarray, dice: np.ndarray, fraction: float) -> float:
    """Mean Dice of the slices left when the round(fraction * n) least confident are referred (ties:
    the earlier slice is referred first)."""
    order = np.argsort(np.asarray(confidence), kind="stable")
    referred = int(round(fraction * len(order)))
    kept = np.asarray(dice)[order[referred:]]
    return float(kept.mean()) if len(kept) else float("nan")


def risk_coverage(confidence: np.ndarray, dice: np.ndarray, step: float = 0.01,
                  most: float = 0.9) -> pd.DataFrame:
    """Mean Dice of the kept slices against the fraction referred, 0 to `most` by `step`."""
    fractions = np.round(np.arange(0.0, most + step / 2, step), 4)
    return pd.DataFrame({"referred": fractions,
                         "kept_dice": [kept_dice(confidence, dice, fraction) for fraction in fractions]})


def referral_metrics(confidence: np.ndarray, dice: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """AUROC, Dice kept at each REFERRAL_FRACTIONS, and the shares flagged and of poor slices caught."""
    dice, flags = np.asarray(dice), np.asarray(flags, dtype=bool)
    poor = dice < POOR_DICE
    found = {"confidence_auroc": poor_auroc(confidence, dice)}
    for fraction in REFERRAL_FRACTIONS:
        found[f"referral_{round(fraction * 100):02d}_dice"] = kept_dice(confidence, dice, fraction)
    found["review_flagged"] = float(flags.mean()) if len(flags) else float("nan")
    found["review_caught"] = float(flags[poor].mean()) if poor.any() else float("nan")
    return found
