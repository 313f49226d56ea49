"""The tumour-type head (model.classify): shapes, the loss, training, the scores and the saved model."""

import csv
import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import make_params, synthetic_project
from tumorseg.evaluate.report import EvaluatePaths, evaluate
from tumorseg.evaluate.tumor_type import confusion_rows, predicted_labels, type_scores
from tumorseg.model.build import compile_settings
from tumorseg.model.encoders import build_encoder_unet
from tumorseg.model.losses import BceDiceLoss
from tumorseg.model.outputs import has_type_head
from tumorseg.model.probabilities import predict, predict_probabilities
from tumorseg.model.unet import build_unet, one_hot_types
from tumorseg.serve import export
from tumorseg.serve.predict import main as predict_main
from tumorseg.train.batches import ArrayBatches, make_batches
from tumorseg.train.loop import TrainPaths, train


def test_the_head_adds_a_type_output_beside_the_mask():
    model = build_unet(32, depth=2, filters=4, classify=True)
    out = model.predict_on_batch(np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32))
    assert out["mask"].shape == (3, 32, 32, 1) and out["tumor_type"].shape == (3, 3)
    np.testing.assert_allclose(out["tumor_type"].sum(axis=1), 1.0, rtol=1e-5)
    assert has_type_head(model) and not has_type_head(build_unet(32, depth=2, filters=4))


def test_an_encoder_model_gets_the_head_too():
    model = build_encoder_unet(32, "vgg16", depth=2, filters=4, encoder_weights="none", classify=True)
    assert set(model.output_names) == {"mask", "tumor_type"}
    assert model.output["tumor_type"].shape == (None, 3)


def loss_parts(class_weight):
    keras.utils.set_random_seed(0)
    model = build_unet(32, depth=2, filters=4, classify=True)
    params = make_params({"model.classify": True, "train.loss.class_weight": class_weight})
    segmentation = BceDiceLoss()
    model.compile(optimizer="adam", **compile_settings(segmentation, params))
    rng = np.random.default_rng(1)
    images = rng.random((4, 32, 32, 1), dtype=np.float32)
    masks = (rng.random((4, 32, 32, 1)) > 0.7).astype(np.float32)
    targets = {"mask": masks, "tumor_type": one_hot_types([1, 2, 3, 2])}
    scores = model.evaluate(images, targets, verbose=0, return_dict=True)
    direct = float(segmentation(masks, model.predict_on_batch(images)["mask"]))
    return scores, direct


def test_a_class_weight_of_zero_leaves_the_segmentation_loss_alone():
    scores, direct = loss_parts(0.0)
    assert scores["loss"] == pytest.approx(direct, rel=1e-4)
    assert scores["mask_loss"] == pytest.approx(direct, rel=1e-4)
    assert scores["tumor_type_loss"] > 0


def test_the_class_weight_scales_the_cross_entropy_in_the_total():
    scores, direct = loss_parts(0.5)
    assert scores["loss"] == pytest.approx(direct + 0.5 * scores["tumor_type_loss"], rel=1e-4)


def batches_of(pipeline, images, masks, labels):
    """Every (images, targets) batch of one epoch of the tf.data pipeline or of ArrayBatches, as numpy."""
    if pipeline == "arrays":
        batches = ArrayBatches(images, masks, 2, True, None, 0, False, labels)
        return [batches[index] for index in range(len(batches))]
    return [(np.asarray(x), {k: np.asarray(v) for k, v in y.items()})
            for x, y in make_batches(images, masks, 2, True, None, 0, False, labels)]


@pytest.mark.parametrize("pipeline", ["tf.data", "arrays"])
def test_batches_carry_the_one_hot_type_with_its_slice(pipeline):
    values = {0.1: 1, 0.2: 2, 0.3: 3, 0.4: 2, 0.5: 1}  # slice brightness -> its label
    images = np.stack([np.full((8, 8), value, np.float32) for value in values])
    batches = batches_of(pipeline, images, np.zeros_like(images), list(values.values()))
    for x, y in batches:
        expected = [values[round(float(image.mean()), 1)] for image in x]  # a flip keeps the mean
        np.testing.assert_array_equal(np.argmax(y["tumor_type"], axis=1) + 1, expected)
        assert y["mask"].shape == x.shape
    assert sum(len(x) for x, _ in batches) == 5


def test_type_scores_on_a_hand_made_confusion():
    # truth: 4 glioma, 2 pituitary; predicted: 3 of the gliomas right, 1 called pituitary; pituitaries both right
    truth = [2, 2, 2, 2, 3, 3]
    predicted = [2, 2, 2, 3, 3, 3]
    scores = type_scores(truth, predicted)
    assert scores["type_accuracy"] == pytest.approx(5 / 6)
    assert scores["type_balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    assert scores["glioma_type_precision"] == pytest.approx(1.0)
    assert scores["glioma_type_recall"] == pytest.approx(3 / 4)
    assert scores["pituitary_type_precision"] == pytest.approx(2 / 3)
    assert scores["pituitary_type_recall"] == pytest.approx(1.0)
    assert "meningioma_type_recall" not in scores  # absent from the truth
    rows = confusion_rows(truth, predicted)
    assert list(rows.columns) == ["actual", "predicted"] and len(rows) == 6
    assert ((rows["actual"] == "glioma") & (rows["predicted"] == "pituitary")).sum() == 1
    np.testing.assert_array_equal(predicted_labels([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), [1, 3])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model with the type head trained 2 epochs on synthetic slices, and its data."""
    root = synthetic_project(tmp_path_factory.mktemp("classify"), patients=15, image_size=32, raw_size=128)
    params = make_params({"data.image_size": 32, "model": {"depth": 2, "filters": 4, "classify": True},
                          "train": {"epochs": 2, "batch_size": 8}, "evaluate.bootstrap": 20})
    metrics = train(params, TrainPaths.under(root))
    return root, params, metrics


def test_training_with_the_head_keeps_the_mask_metric_names(trained):
    root, _, metrics = trained
    assert {"dice", "val_dice", "iou", "val_iou", "loss", "val_loss"} <= set(metrics)
    history = pd.read_csv(root / "plots" / "metrics" / "eval" / "dice.tsv", sep="\t")
    assert len(history) == 2
    assert (root / "plots" / "metrics" / "train" / "tumor_type_accuracy.tsv").is_file()


def test_the_saved_model_predicts_both_outputs(trained):
    root, _, _ = trained
    model = keras.models.load_model(root / "model.keras", compile=False)
    images = np.load(root / "numpy" / "images.npy")
    predicted = predict(model, images, np.arange(5), tta="hflip")
    probs, types = predicted.probabilities, predicted.types
    assert probs.shape == (5, 32, 32) and types.shape == (5, 3) and predicted.agreement.shape == (5,)
    np.testing.assert_allclose(types.sum(axis=1), 1.0, rtol=1e-5)
    assert predict_probabilities(model, images, np.arange(5)).shape == (5, 32, 32)


def test_evaluate_reports_the_type_scores_and_the_confusion(trained):
    root, params, _ = trained
    result = evaluate(params, EvaluatePaths.under(root / "eval", root / "numpy", root / "split.csv", root / "raw",
                                                  bundle=root))
    assert 0 <= result["type_accuracy"] <= 1 and 0 <= result["type_balanced_accuracy"] <= 1
    assert json.loads((root / "eval" / "eval.json").read_text())["type_accuracy"] == result["type_accuracy"]
    confusion = pd.read_csv(root / "eval" / "plots" / "confusion.csv")
    per_image = pd.read_csv(root / "eval" / "plots" / "per_image.csv")
    assert len(confusion) == len(per_image) == result["test_images"]
    assert (confusion["actual"] == per_image["class"]).all()
    assert (confusion["predicted"] == per_image["predicted_type"]).all()
    assert per_image["type_probability"].between(1 / 3, 1).all()
    correct = (per_image["class"] == per_image["predicted_type"]).mean()
    assert result["type_accuracy"] == pytest.approx(correct, abs=1e-4)


def test_predict_writes_the_type_and_its_probability(trained, tmp_path, monkeypatch):
    """The trained and evaluated folder is all predict needs."""
    root, params, _ = trained
    evaluate(params, EvaluatePaths.under(root / "eval", root / "numpy", root / "split.csv", root / "raw", bundle=root))
    monkeypatch.chdir(tmp_path)  # no models/unet/ here
    picture = tmp_path / "slice.png"
    Image.fromarray((np.load(root / "numpy" / "images.npy")[0] * 255).astype(np.uint8)).save(picture)
    assert predict_main([str(picture), "--out", str(tmp_path / "out"), "--model", str(root)]) == 0
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["tumor_type"] in ("meningioma", "glioma", "pituitary")
    assert 1 / 3 <= float(row["type_probability"]) <= 1


def test_exports_keep_both_outputs(trained, tmp_path):
    root, _, _ = trained
    model = keras.models.load_model(root / "model.keras", compile=False)
    export.export_all(model, tmp_path, {"image_size": 32})
    images = np.load(root / "numpy" / "images.npy")[:3]
    saved_model = tf.saved_model.load(str(tmp_path / export.SAVED_MODEL_DIR))
    served = saved_model.serve(tf.constant(images[..., None]))
    assert set(served) == {"mask", "tumor_type"}
    reference = model.predict_on_batch(images[..., None])
    np.testing.assert_allclose(np.asarray(served["tumor_type"]), reference["tumor_type"], atol=1e-4)
    interpreter = export.tflite_interpreter(tmp_path / export.TFLITE_FLOAT32)
    assert sorted(len(detail["shape"]) for detail in interpreter.get_output_details()) == [2, 4]
    np.testing.assert_allclose(export.run_tflite(tmp_path / export.TFLITE_FLOAT32, images),
                               reference["mask"][..., 0], atol=1e-4)
