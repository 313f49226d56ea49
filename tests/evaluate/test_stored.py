"""Predictions saved on one machine and scored on another (tumorseg.evaluate.stored): the round trip, the
checks, and evaluate_stored giving evaluate's scores."""

from dataclasses import replace

import numpy as np
import pytest

from tests.evaluate.test_evaluate import PARAMS, SIZE, dataset, evaluated  # noqa: F401  (fixtures)
from tumorseg.data.arrays import load_arrays, read_npz, read_split, subset_positions
from tumorseg.errors import InputError
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.report import EvaluatePaths, evaluate_stored
from tumorseg.evaluate.stored import load_predictions, save_predictions
from tumorseg.model.load import load_model
from tumorseg.model.probabilities import Predictions, predict


def predictions(n, size=8, types=True, seed=0):
    rng = np.random.default_rng(seed)
    kinds = rng.random((n, 3), dtype=np.float32)
    return Predictions(rng.random((n, size, size), dtype=np.float32),
                       kinds / kinds.sum(axis=1, keepdims=True) if types else None,
                       rng.random(n, dtype=np.float32))


def test_round_trip_quantises_probabilities_only(tmp_path):
    val, test = predictions(3), predictions(5, types=False, seed=1)
    ids = {"val": np.array([7, 3, 9]), "test": np.arange(10, 15)}
    save_predictions(tmp_path / "p.npz", {"val": val, "test": test}, ids, "hflip")
    loaded = load_predictions(tmp_path / "p.npz", "val", ids["val"], 8, "hflip")
    assert loaded.probabilities.dtype == np.float32
    assert np.abs(loaded.probabilities - val.probabilities).max() <= 1 / 510 + 1e-7
    np.testing.assert_array_equal(loaded.agreement, val.agreement)
    np.testing.assert_array_equal(loaded.types, val.types)
    assert load_predictions(tmp_path / "p.npz", "test", ids["test"], 8, "hflip").types is None
    # exact levels stay exact
    assert np.allclose(load_predictions(tmp_path / "p.npz", "val", ids["val"], 8, "hflip").probabilities * 255,
                       np.rint(val.probabilities * 255), atol=1e-4)


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "ids": np.array([7, 9, 3])}, "not the split's 3 val slices in the same order"),
    (lambda a: {**a, "tta": "none"}, "set evaluate.tta=hflip"),
    (lambda a: {**a, "size": 16}, "data.image_size"),
])
def test_mismatches_are_refused_with_the_fix(tmp_path, change, message):
    ids = {"val": np.array([7, 3, 9]), "test": np.arange(10, 15)}
    save_predictions(tmp_path / "p.npz", {"val": predictions(3), "test": predictions(5)}, ids, "hflip")
    asked = change({"ids": ids["val"], "tta": "hflip", "size": 8})
    with pytest.raises(InputError, match=message):
        load_predictions(tmp_path / "p.npz", "val", asked["ids"], asked["size"], asked["tta"])


@pytest.mark.parametrize("change, message", [
    (lambda p: replace(p, agreement=np.full(3, np.nan, np.float32)), r"val_agreement holds values that are not finite"),
    (lambda p: replace(p, agreement=np.ones(2, np.float32)), r"val_agreement is float32 \(2,\), expected .* \(3,\)"),
    (lambda p: replace(p, types=np.full((3, 2), 0.5, np.float32)), r"val_types is float32 \(3, 2\)"),
    (lambda p: replace(p, types=np.full((3, 3), np.nan, np.float32)), "val_types holds values that are not finite"),
    (lambda p: replace(p, types=np.full((3, 3), 0.9, np.float32)), "val_types rows do not sum to 1"),
])
def test_what_comes_back_is_checked_before_it_is_scored(tmp_path, change, message):
    ids = {"val": np.array([7, 3, 9]), "test": np.arange(10, 15)}
    save_predictions(tmp_path / "p.npz", {"val": change(predictions(3)), "test": predictions(5)}, ids, "hflip")
    with pytest.raises(InputError, match=message):
        load_predictions(tmp_path / "p.npz", "val", ids["val"], 8, "hflip")


def test_a_file_declaring_more_than_the_cap_is_refused_before_reading(tmp_path):
    ids = {"val": np.array([1]), "test": np.array([2])}
    save_predictions(tmp_path / "p.npz", {"val": predictions(1), "test": predictions(1)}, ids, "none")
    assert read_npz(tmp_path / "p.npz", "predictions file", "fix")  # under the default cap
    with pytest.raises(InputError, match=r"p.npz: its arrays declare .* GiB, more than the .* refusing to read it"):
        read_npz(tmp_path / "p.npz", "predictions file", "fix", max_bytes=100)


def test_missing_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_predictions(tmp_path / "none.npz", "val", np.array([1]), 8, "none")
    ids = {"val": np.array([1]), "test": np.array([2])}
    save_predictions(tmp_path / "p.npz", {"val": predictions(1), "test": predictions(1)}, ids, "none")
    data = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.npz is not a readable predictions file"):
        load_predictions(tmp_path / "cut.npz", "val", ids["val"], 8, "none")


def test_evaluate_stored_scores_as_evaluate(dataset, evaluated, tmp_path):  # noqa: F811
    arrays = load_arrays(dataset["numpy"])
    split = read_split(dataset["split"], ("val", "test"))
    model = load_model(dataset["model"])
    positions = {subset: subset_positions(split, arrays, subset, dataset["split"]) for subset in ("val", "test")}
    predicted = {subset: predict(model, arrays["images"], rows, 32, "none") for subset, rows in positions.items()}
    ids = {subset: np.asarray(arrays["ids"])[rows] for subset, rows in positions.items()}
    save_predictions(tmp_path / "p.npz", predicted, ids, "none")
    paths = EvaluatePaths.under(tmp_path, dataset["numpy"], dataset["split"], dataset["raw"])
    result = evaluate_stored(tmp_path / "p.npz", PARAMS, paths)
    _, expected, chosen = evaluated
    for key in ("dice", "iou", "dice_native", "glioma_dice", "pituitary_dice", "meningioma_dice", "failures",
                "val_iou"):
        assert result[key] == pytest.approx(expected[key], abs=1e-3), key
    assert Choices.load(tmp_path / "choices.json").threshold == chosen.threshold
    assert (tmp_path / "plots" / "per_image.csv").is_file()
