import json

import numpy as np
import pandas as pd
import pytest

from tests.helpers import identity_model, make_params, model_folder
from tumorseg.bundle import CHOICES_FILE
from tumorseg.data.matfile import Slice, write_slice
from tumorseg.errors import InputError
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.confidence import FEATURES
from tumorseg.evaluate.postprocess import PostProcess
from tumorseg.evaluate.report import EvaluatePaths, evaluate

SIZE = 16
# patient -> (subset, label, slices)
PATIENTS = {
    "p_train": ("train", 1, 2),
    "p_val1": ("val", 1, 2),
    "p_val2": ("val", 2, 2),
    "p_men": ("test", 1, 2),
    "p_gli": ("test", 2, 3),
    "p_pit": ("test", 3, 2),
}
# The identity model returns the image as the probability. Tumour pixels and
# one distractor block (outside the tumour) get these intensities, so the best
# validation thresholds are 0.25 and 0.30 (-> 0.30, nearest 0.5) while the
# best test thresholds would be 0.75 and 0.80.
INTENSITY = {"train": (0.6, 0.2), "val": (0.33, 0.22), "test": (0.83, 0.72)}
PARAMS = make_params({"seed": 42, "evaluate": {"threshold_min": 0.05, "threshold_max": 0.95, "threshold_step": 0.05,
                                               "bootstrap": 200, "tta": "none", "postprocess": "none"}})


def make_dataset(root, size=SIZE):
    """data/numpy, data/split.csv, data/raw/<id>.mat under root; returns paths."""
    numpy_dir, raw_dir = root / "data" / "numpy", root / "data" / "raw"
    numpy_dir.mkdir(parents=True)
    raw_dir.mkdir(parents=True)
    images, masks, labels, pids, ids, rows = [], [], [], [], [], []
    slice_id = 100
    for pid, (subset, label, count) in PATIENTS.items():
        tumour_level, distractor_level = INTENSITY[subset]
        for k in range(count):
            slice_id += 1
            mask = np.zeros((size, size), np.uint8)
            top = 2 + k
            mask[top:top + 4, 3:7] = 1  # 16 tumour pixels
            image = np.zeros((size, size), np.float32)
            image[mask == 1] = tumour_level
            image[10:12, 10:10 + 1 + k % 2] = distractor_level  # 2 or 4 false positives
            native = 2 if slice_id % 2 else 1  # raw slices at 2x or 1x the array size
            raw_mask = np.kron(mask, np.ones((native, native), np.uint8))
            raw_image = (np.kron(image, np.ones((native, native))) * 1000).astype(np.int16)
            write_slice(raw_dir / f"{slice_id}.mat",
                        Slice(raw_image, raw_mask, label, pid, np.array([[1.0, 1.0], [2.0, 2.0]])))
            images.append(image)
            masks.append(mask)
            labels.append(label)
            pids.append(pid)
            ids.append(slice_id)
            rows.append({"index": slice_id, "pid": pid, "label": label, "subset": subset})
    np.save(numpy_dir / "images.npy", np.array(images, np.float32))
    np.save(numpy_dir / "masks.npy", np.array(masks, np.uint8))
    np.save(numpy_dir / "labels.npy", np.array(labels, np.uint8))
    np.save(numpy_dir / "pids.npy", np.array(pids, dtype=str))
    np.save(numpy_dir / "ids.npy", np.array(ids, np.int32))
    split_csv = root / "data" / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    return numpy_dir, split_csv, raw_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    numpy_dir, split_csv, raw_dir = make_dataset(root)
    model_path = identity_model(root / "model.keras", SIZE)
    return {"root": root, "model": model_path, "numpy": numpy_dir, "split": split_csv, "raw": raw_dir}


def evaluate_into(out, dataset, params=PARAMS, **changes):
    """evaluate with a fresh model folder of the identity model under `out` (the inputs of `dataset`, each
    replaced by `changes`); returns (the metrics, the choices written into the model folder)."""
    inputs = {name: dataset[name] for name in ("numpy", "split", "raw")} | changes
    bundle = model_folder(out / "model", changes.get("model", dataset["model"]), choices=None)
    paths = EvaluatePaths.under(out, inputs["numpy"], inputs["split"], inputs["raw"], bundle)
    result = evaluate(params, paths)
    return result, Choices.load(bundle / CHOICES_FILE)


@pytest.fixture(scope="module")
def evaluated(dataset):
    out = dataset["root"] / "out"
    result, chosen = evaluate_into(out, dataset)
    return out, result, chosen


def test_threshold_is_chosen_on_validation(evaluated):
    out, result, chosen = evaluated
    assert chosen.threshold == 0.3
    sweep = pd.read_csv(out / "plots" / "threshold_sweep.csv")
    assert list(sweep.columns) == ["threshold", "iou", "dice"]
    assert len(sweep) == 19
    best = sweep[sweep["iou"] == sweep["iou"].max()]["threshold"].tolist()
    assert best == [0.25, 0.3]  # validation optimum; on test it would be 0.75 or 0.80
    assert result["val_iou"] == 1.0


def test_the_headline_and_the_details(evaluated):
    out, result, chosen = evaluated
    headline = json.loads((out / "eval.json").read_text())
    details = json.loads((out / "eval_details.json").read_text())
    classes = ("meningioma", "glioma", "pituitary")
    assert list(headline) == ["dice", "dice_ci_low", "dice_ci_high", "iou", "failures", "val_iou",
                              *(f"{name}_{key}" for name in classes for key in ("dice", "iou", "failures"))]
    assert not set(headline) & set(details) and headline | details == result
    written = result
    scores = {"dice", "dice_native", "dice_ci_low", "dice_ci_high", "dice_native_ci_low", "dice_native_ci_high"}
    counts = {"test_images", "test_patients", "failures"}
    classes = ("meningioma", "glioma", "pituitary")
    expected = (
        {"iou", "iou_pooled", "dice_pooled", "val_iou"} | scores | counts
        | {f"{name}_{key}" for name in classes for key in ("iou", "n", "failures", *scores)}
    )
    confidence_keys = (
        {"confidence_auroc", "referral_05_dice", "referral_10_dice", "referral_20_dice", "review_flagged",
         "review_caught"} | {f"{name}_confidence_auroc" for name in classes}
    )
    assert set(written) == expected | confidence_keys  # the choices are the model folder's, not metrics
    # no test slice fails (Dice < 0.5): no AUROC, nothing to catch, all kept at every referral share
    assert written["confidence_auroc"] is None and written["review_caught"] is None
    assert written["referral_20_dice"] == pytest.approx(written["dice"], abs=0.02)
    assert (chosen.postprocess, chosen.tta) == (PostProcess(), "none") and set(chosen.confidence.weights) == set(FEATURES)
    assert all(not isinstance(value, dict) for value in written.values())
    assert written["test_images"] == 7 and written["test_patients"] == 3
    assert (written["meningioma_n"], written["glioma_n"], written["pituitary_n"]) == (2, 3, 2)
    assert written["failures"] == 0
    for key in expected - counts - {f"{name}_{key}" for name in classes for key in ("n", "failures")}:
        assert 0.0 <= written[key] <= 1.0, key
    # at 0.30 every test distractor block is a false positive: 16 / (16 + 2 or 4)
    assert written["iou"] < 1.0
    assert written["dice_ci_low"] <= written["dice"] <= written["dice_ci_high"]
    assert written["dice_native"] == pytest.approx(written["dice"], abs=1e-3)
    assert written["dice_native_ci_low"] <= written["dice_native"] <= written["dice_native_ci_high"]
    # one patient per test class: its interval is the single value
    assert written["pituitary_dice_ci_low"] == written["pituitary_dice_ci_high"] == written["pituitary_dice"]
    assert written["meningioma_iou"] == pytest.approx((16 / 18 + 16 / 20) / 2, abs=1e-4)


def test_per_image_and_per_class_tables(evaluated):
    out, result, _ = evaluated
    per_image = pd.read_csv(out / "plots" / "per_image.csv")
    assert list(per_image.columns)[:8] == ["index", "pid", "label", "class", "iou", "dice", "true_pixels", "pred_pixels"]
    assert len(per_image) == 7
    assert set(per_image["pid"]) == {"p_men", "p_gli", "p_pit"}
    assert (per_image["true_pixels"] == 16).all()
    assert set(per_image["pred_pixels"]) == {18, 20}
    assert per_image["dice"].mean() == pytest.approx(result["dice"], abs=1e-4)
    assert ((per_image["confidence"] > 0) & (per_image["confidence"] < 1)).all()
    assert {f"feature_{name}" for name in FEATURES} | {"review"} <= set(per_image.columns)
    risk = pd.read_csv(out / "plots" / "risk_coverage.csv")
    assert risk["referred"].iloc[0] == 0.0 and risk["kept_dice"].iloc[0] == pytest.approx(result["dice"], abs=1e-4)
    per_class = pd.read_csv(out / "plots" / "per_class.csv")
    assert list(per_class.columns) == [
        "class", "dice", "iou", "dice_native", "n", "failures", "confidence_auroc",
        "dice_ci_low", "dice_ci_high", "dice_native_ci_low", "dice_native_ci_high",
    ]
    assert per_class["class"].tolist() == ["meningioma", "glioma", "pituitary"]
    assert per_class["n"].tolist() == [2, 3, 2]
    # a model without the type head: no type columns, an empty confusion table (no missing-plot warning)
    assert "predicted_type" not in per_image.columns and "type_accuracy" not in result
    assert (out / "plots" / "confusion.csv").read_text().strip() == "actual,predicted"


def test_largest_component_removes_the_distractors(dataset, tmp_path):
    params = PARAMS.replaced({"evaluate.postprocess": "largest"})
    result, chosen = evaluate_into(tmp_path, dataset, params)
    # the same threshold as without post-processing, and every distractor block (2 or 4 pixels) is gone
    assert (chosen.threshold, chosen.postprocess) == (0.3, PostProcess("largest"))
    assert result["iou"] == result["dice"] == result["dice_native"] == 1.0


def test_auto_postprocess_keeps_none_on_a_validation_tie(evaluated, dataset, tmp_path):
    params = PARAMS.replaced({"evaluate.postprocess": "auto"})
    # validation IoU is already 1.0 without post-processing: nothing else can beat it
    assert evaluate_into(tmp_path, dataset, params) == evaluated[1:]


def _run(dataset, tmp_path, **changes):
    evaluate_into(tmp_path / "out", dataset, **changes)


def _assert_nothing_written(tmp_path, keep=()):
    """Nothing but the inputs (`keep`) and the model folder's own two files."""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in keep) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]
    assert sorted(p.name for p in (tmp_path / "out" / "model").iterdir()) == ["model.keras", "preprocessing.json"]


def test_unloadable_model_raises_and_writes_nothing(dataset, tmp_path):
    bundle = model_folder(tmp_path / "model", dataset["model"], choices=None)
    paths = EvaluatePaths.under(tmp_path / "out", dataset["numpy"], dataset["split"], dataset["raw"], bundle)
    (bundle / "model.keras").write_bytes(b"not a keras archive")
    with pytest.raises(InputError, match=r"model\.keras.*train stage"):
        evaluate(PARAMS, paths)
    (bundle / "model.keras").unlink()
    with pytest.raises(InputError, match="not found.*train stage"):
        evaluate(PARAMS, paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in bundle.iterdir()) == ["preprocessing.json"]


def test_a_model_trained_on_other_slices_is_refused(dataset, tmp_path):
    params = PARAMS.replaced({"data.normalize_percentile": 98.0})
    with pytest.raises(InputError, match="normalised at percentile 99.5, params.yaml prepares them at 98"):
        evaluate_into(tmp_path / "out", dataset, params)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("subset", ["val", "test"])
def test_empty_subset_raises_and_writes_nothing(dataset, tmp_path, subset):
    split = pd.read_csv(dataset["split"])
    split.loc[split["subset"] == subset, "subset"] = "train"
    split_csv = tmp_path / "split.csv"
    split.to_csv(split_csv, index=False)
    with pytest.raises(InputError, match=f"'{subset}' subset is empty"):
        _run(dataset, tmp_path, split=split_csv)
    _assert_nothing_written(tmp_path, keep={"split.csv"})


def test_length_mismatch_raises_and_writes_nothing(dataset, tmp_path):
    numpy_dir = tmp_path / "numpy"
    numpy_dir.mkdir()
    for name in ("images", "masks", "labels", "pids", "ids"):
        array = np.load(dataset["numpy"] / f"{name}.npy")
        np.save(numpy_dir / f"{name}.npy", array[:-1] if name == "labels" else array)
    with pytest.raises(InputError, match="different lengths"):
        _run(dataset, tmp_path, numpy=numpy_dir)
    _assert_nothing_written(tmp_path, keep={"numpy"})


def test_unknown_split_id_raises_and_writes_nothing(dataset, tmp_path):
    split = pd.read_csv(dataset["split"])
    split.loc[split["subset"] == "test", "index"] += 1000
    split_csv = tmp_path / "split.csv"
    split.to_csv(split_csv, index=False)
    with pytest.raises(InputError, match="not found in ids.npy"):
        _run(dataset, tmp_path, split=split_csv)
    _assert_nothing_written(tmp_path, keep={"split.csv"})


def test_missing_raw_slice_raises_and_writes_nothing(dataset, tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    with pytest.raises(InputError, match="raw slice"):
        _run(dataset, tmp_path, raw=raw_dir)
    _assert_nothing_written(tmp_path, keep={"raw"})


