"""The confidence score: its features on hand-made maps, the fit, the review threshold and the referral
figures against hand-computed cases."""

import json
import math

import numpy as np
import pytest

from tumorseg.evaluate.choices import Choices, ChoicesError
from tumorseg.evaluate.confidence import (
    FEATURES,
    ConfidenceModel,
    kept_dice,
    poor_auroc,
    referral_metrics,
    review_threshold,
    risk_coverage,
    slice_features,
)
from tumorseg.evaluate.postprocess import PostProcess
from tumorseg.model.probabilities import Predictions, soft_agreement

SIZE = 16


def entropy_bits(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def hand_made_maps():
    """A confident 4x4 blob (0.95, the rest 0), a diffuse map (0.5 everywhere), an empty prediction (0.1)."""
    blob = np.zeros((SIZE, SIZE))
    blob[4:8, 4:8] = 0.95
    return np.stack([blob, np.full((SIZE, SIZE), 0.5), np.full((SIZE, SIZE), 0.1)])


def features_by_name(rows):
    return [dict(zip(FEATURES, row)) for row in rows]


def test_features_of_a_confident_blob_a_diffuse_map_and_an_empty_prediction():
    maps = hand_made_maps()
    blob, diffuse, empty = features_by_name(slice_features(maps, maps >= 0.5, np.array([1.0, 0.7, 1.0])))
    assert blob["mean_inside"] == pytest.approx(0.95)
    assert blob["components"] == 1 and blob["log_area"] == pytest.approx(math.log1p(1e4 * 16 / 256))
    # 16 pixels of entropy H(0.95); the 240 zeros add almost nothing; per (16 + 1) predicted pixels
    assert blob["uncertainty"] == pytest.approx(16 * entropy_bits(0.95) / 17, abs=1e-3)
    assert diffuse["mean_inside"] == 0.5 and diffuse["uncertainty"] == pytest.approx(256 / 257)
    assert diffuse["agreement"] == 0.7 and diffuse["components"] == 1
    assert empty["mean_inside"] == 0.0 and empty["components"] == 0 and empty["log_area"] == 0.0
    assert empty["uncertainty"] == pytest.approx(256 * entropy_bits(0.1))
    assert blob["type_probability"] == 1.0  # no type head
    types = np.array([[0.2, 0.7, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05]])
    assert slice_features(maps, maps >= 0.5, np.ones(3), types)[:, FEATURES.index("type_probability")] \
        == pytest.approx([0.7, 1 / 3, 0.9])


def test_two_regions_count_as_two_components():
    probabilities = np.zeros((1, SIZE, SIZE))
    probabilities[0, 1:3, 1:3] = probabilities[0, 10:12, 10:12] = 0.9
    assert slice_features(probabilities, probabilities >= 0.5, np.ones(1))[0, FEATURES.index("components")] == 2


def test_a_fitted_score_ranks_the_confident_blob_first():
    rng = np.random.default_rng(0)
    good = np.column_stack([rng.uniform(0.8, 1.0, 40), rng.uniform(0.1, 0.3, 40), np.ones((40, 4))])
    bad = np.column_stack([rng.uniform(0.3, 0.6, 20), rng.uniform(0.6, 1.0, 20), np.ones((20, 4))])
    model = ConfidenceModel.fit(np.vstack([good, bad]), np.r_[np.full(40, 0.9), np.full(20, 0.1)])
    assert model.fitted and model.weights["mean_inside"] > 0 and model.weights["uncertainty"] < 0
    maps = hand_made_maps()
    _, confidence, _ = Choices(0.5, PostProcess(), "none", model).score(Predictions(maps, None, np.ones(3)))
    assert confidence[0] > confidence[1] and confidence[0] > confidence[2]
    assert ((confidence > 0) & (confidence < 1)).all()
    # the review threshold flags at least 80% of the validation poor slices
    scores = model.score(np.vstack([good, bad]))
    assert model.flags(scores[40:]).mean() >= 0.8


def test_without_poor_slices_on_validation_the_fallback_ranks_by_mean_inside():
    features = slice_features(hand_made_maps(), hand_made_maps() >= 0.5, np.ones(3))
    model = ConfidenceModel.fit(features, np.array([0.9, 0.8, 0.7]))
    assert not model.fitted and model.review_threshold == 0.0
    confidence = model.score(features)
    assert confidence[0] > confidence[1] > confidence[2]
    assert not model.flags(confidence).any()


def binomial_tail(k, n, p):
    """P(X >= k) for X ~ Binomial(n, p), summed by hand."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_review_threshold_on_hand_made_cases():
    # 20 poor slices: catching 19 leaves P(X >= 19 | p = 0.8) = 20 * 0.8^19 * 0.2 + 0.8^20 = 0.069 > 0.05,
    # so 0.8 is not excluded at 95%; catching all 20 gives 0.8^20 = 0.012: the 20th poor slice's score
    poor = np.arange(1, 21) / 100
    confidence = np.concatenate([poor, [0.5, 0.9]])
    failed = np.array([True] * 20 + [False, False])
    assert binomial_tail(19, 20, 0.8) > 0.05 >= binomial_tail(20, 20, 0.8)
    assert review_threshold(confidence, failed) == 0.20
    # 100 poor slices: the smallest k with P(X >= k | 0.8) <= 0.05, found by the hand sum
    k = next(k for k in range(80, 101) if binomial_tail(k, 100, 0.8) <= 0.05)
    assert k == 87
    assert review_threshold(np.arange(1, 101) / 1000, np.ones(100, bool)) == pytest.approx(k / 1000)
    # 5 poor slices: even all 5 leave 0.8^5 = 0.33 > 0.05: every poor slice is flagged
    assert review_threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]), np.array([1, 1, 1, 1, 1, 0], bool)) == 0.5
    assert review_threshold(np.array([0.1, 0.9]), np.zeros(2, bool)) == 0.0


def test_auroc_referral_and_risk_coverage_on_a_hand_made_case():
    confidence = np.array([0.9, 0.8, 0.3, 0.6, 0.1])
    dice = np.array([0.9, 0.8, 0.2, 0.4, 0.7])
    # poor slices (Dice < 0.5): slices 2 (0.3) and 3 (0.6); good: 0.9, 0.8, 0.1. Pairs (poor slice less
    # confident than good): 0.3 < 0.9, 0.8 but not 0.1; 0.6 < 0.9, 0.8 but not 0.1 -> 4 of 6
    assert poor_auroc(confidence, dice) == pytest.approx(4 / 6)
    assert poor_auroc(confidence, np.ones(5)) != poor_auroc(confidence, np.ones(5))  # NaN
    # referring 20% of 5 = 1 slice: the least confident (0.1, Dice 0.7) -> mean of 0.9, 0.8, 0.2, 0.4
    assert kept_dice(confidence, dice, 0.2) == pytest.approx((0.9 + 0.8 + 0.2 + 0.4) / 4)
    assert kept_dice(confidence, dice, 0.0) == pytest.approx(dice.mean())
    curve = risk_coverage(confidence, dice, step=0.2, most=0.8)
    assert curve["referred"].tolist() == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert curve["kept_dice"].iloc[-1] == pytest.approx(0.9)  # only the most confident slice is kept
    found = referral_metrics(confidence, dice, confidence <= 0.3)
    assert found["review_flagged"] == pytest.approx(2 / 5)
    assert found["review_caught"] == pytest.approx(1 / 2)  # slice 2 flagged, slice 3 not
    assert found["referral_20_dice"] == pytest.approx(kept_dice(confidence, dice, 0.2))


def test_soft_agreement_of_the_flip_passes():
    blob = hand_made_maps()[:1]
    assert soft_agreement(blob, blob)[0] == pytest.approx(1.0)
    elsewhere = np.roll(blob, 8, axis=2)
    assert soft_agreement(blob, elsewhere)[0] == pytest.approx(1 / (2 * 16 * 0.95**2 + 1))
    assert soft_agreement(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))[0] == 1.0


def test_the_model_survives_the_choices_file_exactly(tmp_path):
    model = ConfidenceModel({name: 0.1 * (i + 1) / 3 for i, name in enumerate(FEATURES)}, -0.123456789, 0.4321, True)
    path = tmp_path / "choices.json"
    Choices(0.4, confidence=model).save(path)
    assert Choices.load(path).confidence == model


@pytest.mark.parametrize("change, message", [
    ({"confidence": None}, "unusable choices"),
    ({"confidence": {"fitted": True, "bias": 0.0, "review_threshold": 0.5, "weights": {"mean_inside": 1.0}}},
     "must name the features"),
    ({"confidence": "nan"}, "unusable choices"),
    ({"threshold": 1.5}, "must be a number in"),
    ({"format": 2}, "this version reads 1"),
])
def test_a_damaged_choices_file_is_refused_naming_the_fix(tmp_path, change, message):
    path = tmp_path / "choices.json"
    Choices(0.4).save(path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ChoicesError, match=message) as refused:
        Choices.load(path)
    assert str(path) in str(refused.value) and "dvc repro evaluate" in str(refused.value)


def test_a_non_finite_confidence_weight_is_refused(tmp_path):
    path = tmp_path / "choices.json"
    Choices(0.4).save(path)
    stored = json.loads(path.read_text())
    stored["confidence"]["bias"] = float("nan")
    path.write_text(json.dumps(stored))
    with pytest.raises(ChoicesError, match="must be finite numbers"):
        Choices.load(path)
