"""Score the trained model: choose the threshold on validation, report test.

The threshold and the post-processing (tumorseg.evaluate.postprocess) are tuned on
the validation patients only and then applied unchanged to the test
patients; with evaluate.tta the probabilities are averaged over flips
first. The confidence score (tumorseg.evaluate.confidence) is fitted on the
validation slices too and judged on test: how well it finds the poor slices and
what referring the least confident slices gains. Outputs: the choices, into the model folder
(choices.json, tumorseg.bundle); two flat metrics JSONs (for `dvc metrics`): the headline scores and the
details; and a folder of CSV tables (for `dvc plots`).
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_dir, write_json
from tumorseg.bundle import CHOICES_FILE, DEFAULT_FOLDER, MODEL_FILE, PREPROCESSING_FILE, Preprocessing
from tumorseg.config import Params
from tumorseg.data.arrays import load_arrays, read_split, subset_positions
from tumorseg.data.matfile import read_slice
from tumorseg.data.preprocess import resize_probabilities
from tumorseg.data.split import patient_families
from tumorseg.errors import InputError
from tumorseg.evaluate import confidence, metrics, stored, tumor_type
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.postprocess import PostProcess, candidates
from tumorseg.model.load import check_model_input, load_model
from tumorseg.model.probabilities import DEFAULT_BATCH_SIZE, Predictions, predict

DECIMALS = 4


# ----------------------------------------------------------------- inputs


def check_raw_files(raw_dir: str | Path, ids: np.ndarray) -> None:
    """Raise unless raw_dir/<id>.mat exists for every id."""
    missing = [int(i) for i in ids if not (Path(raw_dir) / f"{int(i)}.mat").is_file()]
    if missing:
        raise InputError(
            f"{raw_dir}: {len(missing)} raw slice(s) missing (first: {missing[:5]}); "
            "re-run the download stage (dvc repro)."
        )


# ------------------------------------------------------------- prediction


def native_dice(probs: np.ndarray, ids: np.ndarray, raw_dir: str | Path, chosen: Choices) -> np.ndarray:
    """Dice at each raw slice's own resolution against its original tumorMask.

    The probability map is resized bilinearly to the raw slice's size, then made a mask as `chosen` says.
    """
    scores = np.empty(len(ids))
    for i, (prob, slice_id) in enumerate(zip(probs, ids)):
        truth = read_slice(Path(raw_dir) / f"{int(slice_id)}.mat", with_border=False).mask
        native = prob if prob.shape == truth.shape else resize_probabilities(prob, truth.shape)
        pred = chosen.masks(native)
        scores[i] = metrics.dice_per_image(truth[None], pred[None])[0]
    return scores


def choose_on_validation(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                         postprocess_choice: str) -> tuple[float, PostProcess, float, dict[str, np.ndarray]]:
    """The (threshold, post-processing) pair with the best mean validation IoU, and its sweep.

    Every candidate post-processing is swept over every threshold; ties go to
    the earlier candidate ("none" first), then as metrics.choose_threshold.
    Returns (threshold, postprocess, val_iou, sweep of the chosen candidate).
    """
    best = None
    for postprocess in candidates(postprocess_choice):
        sweep = metrics.threshold_sweep(truth, probs, thresholds, postprocess.apply)
        threshold = metrics.choose_threshold(sweep["threshold"], sweep["iou"])
        val_iou = float(sweep["iou"][np.argmin(np.abs(sweep["threshold"] - threshold))])
        if best is None or val_iou > best[2] + metrics.TIE_TOLERANCE:
            best = (threshold, postprocess, val_iou, sweep)
    return best


def fit_confidence(val_truth: np.ndarray, val_predicted: Predictions, chosen: Choices,
                   seed: int) -> confidence.ConfidenceModel:
    """The confidence score's model fitted on the validation slices' Dice with the chosen masks."""
    val_pred, features = chosen.features(val_predicted)
    return confidence.ConfidenceModel.fit(features, metrics.dice_per_image(val_truth, val_pred), seed)


# ---------------------------------------------------------------- reports


def _round(value):
    """Round for JSON; missing or non-finite values become null."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), DECIMALS)


def per_image_table(ids: np.ndarray, pids: np.ndarray, labels: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                    native: np.ndarray) -> pd.DataFrame:
    """One row per test slice."""
    return pd.DataFrame(
        {
            "index": np.asarray(ids, dtype=int),
            "pid": np.asarray(pids).astype(str),
            "label": np.asarray(labels, dtype=int),
            "class": [LABEL_NAMES[int(label)] for label in labels],
            "iou": metrics.iou_per_image(truth, pred),
            "dice": metrics.dice_per_image(truth, pred),
            "true_pixels": truth.reshape(len(truth), -1).sum(axis=1).astype(int),
            "pred_pixels": pred.reshape(len(pred), -1).sum(axis=1).astype(int),
            "dice_native": np.asarray(native, dtype=np.float64),
        }
    )


def confidence_intervals(part: pd.DataFrame, resamples: int, seed: int) -> dict[str, float]:
    """95% patient-bootstrap intervals of mean Dice and native-resolution Dice of a per-image table.

    Patients are resampled by family (tumorseg.data.split.patient_family): a
    patient's further scans are not independent of the first.
    """
    if not len(part):
        return {}
    families = patient_families(part["pid"])
    found = {}
    for column in ("dice", "dice_native"):
        low, high = metrics.bootstrap_ci(part[column].to_numpy(), families, resamples, seed)
        found[f"{column}_ci_low"], found[f"{column}_ci_high"] = low, high
    return found


def per_class_table(per_image: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    """Per class (all classes listed): slice count, mean Dice, IoU, native Dice, their CIs, failures."""
    rows = []
    for label, name in LABEL_NAMES.items():
        part = per_image[per_image["label"] == label]
        rows.append(
            {
                "class": name,
                "dice": part["dice"].mean() if len(part) else np.nan,
                "iou": part["iou"].mean() if len(part) else np.nan,
                "dice_native": part["dice_native"].mean() if len(part) else np.nan,
                "n": int(len(part)),
                "failures": int((part["dice"] < metrics.FAILURE_DICE).sum()),
                "confidence_auroc": (confidence.poor_auroc(part["confidence"], part["dice"])
                                     if "confidence" in part else np.nan),
                **confidence_intervals(part, resamples, seed),
            }
        )
    columns = ["class", "dice", "iou", "dice_native", "n", "failures", "confidence_auroc",
               "dice_ci_low", "dice_ci_high", "dice_native_ci_low", "dice_native_ci_high"]
    return pd.DataFrame(rows, columns=columns)


def summary_metrics(per_image: pd.DataFrame, per_class: pd.DataFrame, truth: np.ndarray, pred: np.ndarray,
                    val_iou: float, ci: dict[str, float]) -> dict[str, Any]:
    """The flat dict of test scores (the confidence figures are added by the caller)."""
    result = {
        "iou": _round(per_image["iou"].mean()),
        "dice": _round(per_image["dice"].mean()),
        "iou_pooled": _round(metrics.iou_pooled(truth, pred)),
        "dice_pooled": _round(metrics.dice_pooled(truth, pred)),
        "dice_native": _round(per_image["dice_native"].mean()),
        **{key: _round(value) for key, value in ci.items()},
        "failures": int((per_image["dice"] < metrics.FAILURE_DICE).sum()),
        "val_iou": _round(val_iou),
        "test_images": int(len(per_image)),
        "test_patients": int(per_image["pid"].nunique()),
    }
    for row in per_class.to_dict("records"):
        name = row.pop("class")
        for key, value in row.items():
            result[f"{name}_{key}"] = int(value) if key in ("n", "failures") else _round(value)
    return result


def _fmt(value):
    value = _round(value)
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_share(value):
    return "n/a" if value is None else f"{value:.1%}"


def format_summary(result: dict[str, Any], per_class: pd.DataFrame, chosen: Choices) -> str:
    """A few lines for stdout: the choices, test Dice with its CI, per class."""
    lines = [
        f"threshold {chosen.threshold:g}, post-processing {chosen.postprocess} (chosen on validation, mean IoU "
        f"{_fmt(result['val_iou'])}); test-time augmentation {chosen.tta}",
        f"test Dice {_fmt(result['dice'])} [95% CI {_fmt(result['dice_ci_low'])}, {_fmt(result['dice_ci_high'])}]"
        f"  native-resolution Dice {_fmt(result['dice_native'])} [95% CI {_fmt(result['dice_native_ci_low'])}, "
        f"{_fmt(result['dice_native_ci_high'])}]  IoU {_fmt(result['iou'])}"
        f"  ({result['test_images']} slices, {result['test_patients']} patients)",
    ]
    if result.get("confidence_auroc") is not None:
        lines.append(
            f"confidence: AUROC {_fmt(result['confidence_auroc'])} for slices with Dice < {metrics.POOR_DICE:g};"
            f" referring the 20% least confident leaves Dice {_fmt(result['referral_20_dice'])};"
            f" flagged for review {_fmt_share(result['review_flagged'])} of slices, {_fmt_share(result['review_caught'])}"
            " of those slices")
    if "type_accuracy" in result:
        lines.append(f"tumour type: accuracy {_fmt(result['type_accuracy'])}, balanced accuracy "
                     f"{_fmt(result['type_balanced_accuracy'])}")
    for row in per_class.itertuples(index=False):
        lines.append(
            f"  {row[0]:<11} Dice {_fmt(row.dice)} [{_fmt(row.dice_ci_low)}, {_fmt(row.dice_ci_high)}]"
            f"  native {_fmt(row.dice_native)}  IoU {_fmt(row.iou)}  n={row.n}  Dice < {metrics.FAILURE_DICE:g}: {row.failures}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ stage


@dataclass(frozen=True)
class EvaluatePaths:
    """What evaluate reads and writes; the defaults are the DVC stage's (dvc.yaml)."""

    bundle: Path = DEFAULT_FOLDER  # reads model.keras and preprocessing.json, writes choices.json
    numpy_dir: Path = Path("data/numpy")
    split_csv: Path = Path("data/split.csv")
    raw_dir: Path = Path("data/raw")
    metrics: Path = Path("metrics/eval.json")  # the headline: Dice, its CI, IoU and failures, per class
    details: Path = Path("metrics/eval_details.json")  # the rest: native-resolution Dice, CIs per class, confidence
    plots: Path = Path("plots/eval")

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, Path(getattr(self, name)))

    @classmethod
    def under(cls, folder: str | Path, numpy_dir: str | Path, split_csv: str | Path, raw_dir: str | Path,
              bundle: str | Path | None = None) -> "EvaluatePaths":
        """The outputs under `folder` (eval.json, eval_details.json, plots/; choices.json too unless the model's
        `bundle` folder is given), the inputs where given."""
        folder = Path(folder)
        return cls(bundle or folder, numpy_dir, split_csv, raw_dir, folder / "eval.json",
                   folder / "eval_details.json", folder / "plots")


def evaluate(params: Params, paths: EvaluatePaths = EvaluatePaths()) -> dict[str, Any]:
    """Choose on validation, score test, write the choices into the model folder and the metrics and tables.

    All inputs are checked before anything is written. Returns the metrics (headline and details)."""
    arrays, val, test = evaluation_inputs(paths.numpy_dir, paths.split_csv, paths.raw_dir)
    check_preprocessing(Preprocessing.load(paths.bundle / PREPROCESSING_FILE), params, paths.bundle)
    model_path = paths.bundle / MODEL_FILE
    model = load_model(model_path)
    check_model_input(model, arrays["images"].shape[1], model_path)
    tta = params.evaluate.tta
    val_predicted = predict(model, arrays["images"], val, DEFAULT_BATCH_SIZE, tta)
    test_predicted = predict(model, arrays["images"], test, DEFAULT_BATCH_SIZE, tta)
    return score(val_predicted, test_predicted, arrays, val, test, params, paths)


def evaluate_stored(predictions_path: str | Path, params: Params, paths: EvaluatePaths) -> dict[str, Any]:
    """evaluate on predictions made elsewhere (tumorseg.evaluate.stored): the same choices and scores."""
    arrays, val, test = evaluation_inputs(paths.numpy_dir, paths.split_csv, paths.raw_dir)
    ids, size, tta = np.asarray(arrays["ids"]), arrays["images"].shape[1], params.evaluate.tta
    val_predicted = stored.load_predictions(predictions_path, "val", ids[val], size, tta)
    test_predicted = stored.load_predictions(predictions_path, "test", ids[test], size, tta)
    return score(val_predicted, test_predicted, arrays, val, test, params, paths)


def check_preprocessing(preprocessing: Preprocessing, params: Params, bundle: Path) -> None:
    """InputError unless the model was trained on slices normalised as data/numpy's (params.data; the size is
    checked against the arrays themselves)."""
    percentile = params.data.normalize_percentile
    if preprocessing.normalize_percentile != percentile:
        raise InputError(f"{bundle / PREPROCESSING_FILE}: the model was trained on slices normalised at percentile "
                         f"{preprocessing.normalize_percentile:g}, params.yaml prepares them at {percentile:g}; "
                         "re-run the train stage (dvc repro).")


def evaluation_inputs(numpy_dir: str | Path, split_csv: str | Path,
                      raw_dir: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(arrays of data/numpy, positions of the val slices, of the test slices), the raw test files checked."""
    arrays = load_arrays(numpy_dir)
    split = read_split(split_csv, subsets=("val", "test"))
    val = subset_positions(split, arrays, "val", split_csv)
    test = subset_positions(split, arrays, "test", split_csv)
    check_raw_files(raw_dir, np.asarray(arrays["ids"])[test])
    return arrays, val, test


def score(val_predicted: Predictions, test_predicted: Predictions, arrays: dict[str, np.ndarray],
          val: np.ndarray, test: np.ndarray, params: Params, paths: EvaluatePaths) -> dict[str, Any]:
    """Choose on the val predictions, score the test predictions with those choices, write and print."""
    val_truth = np.asarray(arrays["masks"][val]) > 0
    chosen, val_iou, sweep = choose(val_truth, val_predicted, params)
    result, tables = score_test(test_predicted, arrays, test, paths.raw_dir, chosen, val_iou, params)
    tables["threshold_sweep"] = pd.DataFrame({name: sweep[name] for name in ("threshold", "iou", "dice")})
    write_report(result, tables, chosen, paths)
    print(format_summary(result, tables["per_class"], chosen))
    return result


def choose(val_truth: np.ndarray, val_predicted: Predictions, params: Params) -> tuple[Choices, float, dict]:
    """On the validation slices only: the threshold and post-processing with the best mean IoU, then the
    confidence model fitted on their masks. Returns (choices, validation IoU, the chosen threshold sweep)."""
    settings = params.evaluate
    thresholds = metrics.threshold_grid(settings.threshold_min, settings.threshold_max, settings.threshold_step)
    threshold, postprocess, val_iou, sweep = choose_on_validation(val_truth, val_predicted.probabilities,
                                                                  thresholds, settings.postprocess)
    chosen = Choices(threshold, postprocess, settings.tta)
    scorer = fit_confidence(val_truth, val_predicted, chosen, params.seed)
    return replace(chosen, confidence=scorer), val_iou, sweep


def score_test(test_predicted: Predictions, arrays: dict[str, np.ndarray], test: np.ndarray,
               raw_dir: str | Path, chosen: Choices, val_iou: float,
               params: Params) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """The test slices scored with `chosen`: (the flat metrics, the tables per_image, per_class,
    risk_coverage and confusion)."""
    resamples = params.evaluate.bootstrap
    test_ids = np.asarray(arrays["ids"])[test]
    test_probs, test_types = test_predicted.probabilities, test_predicted.types
    test_truth = np.asarray(arrays["masks"][test]) > 0
    test_pred, scores, features = chosen.score(test_predicted)  # as predict and render_samples make them
    pids, test_labels = np.asarray(arrays["pids"])[test], np.asarray(arrays["labels"])[test]
    per_image = per_image_table(
        test_ids, pids, test_labels, test_truth, test_pred, native_dice(test_probs, test_ids, raw_dir, chosen),
    )
    per_image = per_image.assign(**{f"feature_{name}": values for name, values in zip(confidence.FEATURES, features.T)},
                                 confidence=scores,
                                 review=chosen.confidence.flags(scores))
    per_class = per_class_table(per_image, resamples, params.seed)
    ci = confidence_intervals(per_image, resamples, params.seed)
    result = summary_metrics(per_image, per_class, test_truth, test_pred, val_iou, ci)
    result.update({key: _round(value) for key, value in
                   confidence.referral_metrics(scores, per_image["dice"], per_image["review"]).items()})
    predicted = []
    if test_types is not None:  # the model has the type head (model.classify)
        predicted = tumor_type.predicted_labels(test_types)
        per_image["predicted_type"] = [LABEL_NAMES[int(label)] for label in predicted]
        per_image["type_probability"] = test_types.max(axis=1)
        result.update({key: _round(value) for key, value in tumor_type.type_scores(test_labels, predicted).items()})
    tables = {
        "per_image": per_image,
        "per_class": per_class,
        "risk_coverage": confidence.risk_coverage(scores, per_image["dice"]),
        # without the type head an empty table: dvc plots show then draws an empty matrix instead of
        # warning that the file is missing
        "confusion": tumor_type.confusion_rows(test_labels if test_types is not None else [], predicted),
    }
    return result, tables


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The scores of metrics/eval.json (`dvc metrics show metrics/eval.json` fits a terminal); the rest of
    `result` goes to the details file."""
    per_class = [f"{name}_{score}" for name in LABEL_NAMES.values() for score in ("dice", "iou", "failures")]
    keys = ["dice", "dice_ci_low", "dice_ci_high", "iou", "failures", "val_iou", *per_class, "type_accuracy"]
    return {key: result[key] for key in keys if key in result}


def write_report(result: dict[str, Any], tables: dict[str, pd.DataFrame], chosen: Choices,
                 paths: EvaluatePaths) -> None:
    """The tables as <plots>/<name>.csv (rounded), the choices into the model folder, then the metrics
    (headline and details); each written atomically, the headline last."""
    with atomic_dir(paths.plots) as tmp:
        for name, table in tables.items():
            table.round(DECIMALS).to_csv(tmp / f"{name}.csv", index=False)
    chosen.save(paths.bundle / CHOICES_FILE)
    main = headline(result)
    write_json(paths.details, {key: value for key, value in result.items() if key not in main})
    write_json(paths.metrics, main)
