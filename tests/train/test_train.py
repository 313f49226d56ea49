import json
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import StopAtEpoch, identity_model, make_params, synthetic_project
from tumorseg.bundle import Preprocessing
from tumorseg.config import Oversample
from tumorseg.train import phases as runs_module
from tumorseg.train.loop import TrainPaths, learning_rate, oversampled, train
from tumorseg.train.callbacks import CheckpointFromEpoch, finite_weights
from tumorseg.train.phases import TrainingError, exclusive_work_dir, finish


def small_params(filters=8, **train_overrides):
    train = {"epochs": 8, "batch_size": 8, "lr_max": 3.0e-3, "lr_min": 3.0e-4, **train_overrides}
    return make_params({"data.image_size": 64, "model": {"depth": 3, "filters": filters}, "train": train})


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    """30 synthetic patients, converted to 64x64 arrays and split by patient."""
    return synthetic_project(tmp_path_factory.mktemp("synthetic"), patients=30, image_size=64, raw_size=256)


def run(params, data, out, **kwargs):
    return train(params, TrainPaths.under(out, data / "numpy", data / "split.csv"), **kwargs)


def validation_dice(model_path, data):
    model = keras.models.load_model(model_path)
    split = pd.read_csv(data / "split.csv")
    ids = np.load(data / "numpy" / "ids.npy")
    val = np.isin(ids, split.loc[split["subset"] == "val", "index"])
    images = np.load(data / "numpy" / "images.npy")[val][..., None]
    masks = np.load(data / "numpy" / "masks.npy")[val].astype(bool)
    predicted = model.predict(images, verbose=0)[..., 0] >= 0.5
    intersection = (predicted & masks).sum(axis=(1, 2))
    return np.mean(2 * intersection / (predicted.sum(axis=(1, 2)) + masks.sum(axis=(1, 2))))


@pytest.mark.slow
def test_small_unet_learns_the_synthetic_tumors(synthetic_data, tmp_path):
    params = small_params(monitor="val_dice")
    untrained = tmp_path / "untrained.keras"
    keras.utils.set_random_seed(0)
    from tumorseg.model.unet import build_unet

    build_unet(64, depth=3, filters=8).save(untrained)
    metrics = run(params, synthetic_data, tmp_path)
    assert validation_dice(untrained, synthetic_data) < 0.2
    assert validation_dice(tmp_path / "model.keras", synthetic_data) >= 0.5
    assert metrics["val_dice"] >= 0.5
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved == metrics and saved["epochs"] == 8 and 1 <= saved["best_epoch"] <= 8
    preprocessing = Preprocessing.load(tmp_path / "preprocessing.json")  # the model folder describes itself
    assert (preprocessing.image_size, preprocessing.normalize_percentile) == (64, params.data.normalize_percentile)
    assert preprocessing.trained_with == {key: params.model_dump()[key] for key in ("seed", "data", "split", "model",
                                                                                     "train")}
    curve = pd.read_csv(tmp_path / "plots" / "metrics" / "eval" / "dice.tsv", sep="\t")
    assert list(curve["step"]) == list(range(8))
    # the kept epoch is the one of the best validation Dice (train.monitor)
    assert curve["dice"].idxmax() == saved["best_epoch"] - 1
    assert saved["val_dice"] == pytest.approx(curve["dice"].max(), abs=1e-5)
    lr = pd.read_csv(tmp_path / "plots" / "metrics" / "train" / "learning_rate.tsv", sep="\t")["learning_rate"]
    assert lr.is_monotonic_decreasing and lr.iloc[-1] == pytest.approx(3.0e-4, rel=1e-3)
    assert not (tmp_path / "work").exists()
    with Image.open(tmp_path / "plots" / "curves.png") as picture:
        assert picture.format == "PNG" and picture.size == (1200, 320)
    # the published model loads in plain Keras, without this package's loss and metrics
    load = f"import keras; print(keras.models.load_model({str(tmp_path / 'model.keras')!r}).output_shape)"
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().endswith("(None, 64, 64, 1)")

    # fine-tuning from it (train.init_from) starts where it ended: one epoch at a tiny learning rate
    # keeps a validation Dice that one epoch from random weights is far from
    tuned = small_params(monitor="val_dice", epochs=1, lr_max=1e-7, lr_min=1e-7,
                         init_from=str(tmp_path / "model.keras"))
    assert run(tuned, synthetic_data, tmp_path / "tuned")["val_dice"] >= metrics["val_dice"] - 0.05


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_learning_rate_decays_from_lr_max_to_lr_min(schedule):
    params = small_params(epochs=10, lr_max=1.0e-3, lr_min=1.0e-4, lr_schedule=schedule)
    lr, callbacks = learning_rate(params.train, steps_per_epoch=5)
    assert callbacks == []
    assert float(lr(0)) == pytest.approx(1.0e-3) and float(lr(50)) == pytest.approx(1.0e-4, rel=1e-4)
    assert float(lr(0)) > float(lr(25)) > float(lr(50))


def test_plateau_schedule_is_bounded_by_lr_min():
    params = small_params(lr_schedule="plateau", lr_min=2.0e-4)
    lr, callbacks = learning_rate(params.train, steps_per_epoch=5)
    assert lr == pytest.approx(3.0e-3)
    assert isinstance(callbacks[0], keras.callbacks.ReduceLROnPlateau) and callbacks[0].min_lr == 2.0e-4


class CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.slow
def test_interrupted_run_resumes_where_it_stopped(synthetic_data, tmp_path):
    params = small_params(4, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        run(params, synthetic_data, tmp_path, extra_callbacks=[StopAtEpoch(0)])
    assert not (tmp_path / "model.keras").exists() and not (tmp_path / "train.json").exists()
    assert not (tmp_path / "preprocessing.json").exists()
    counter = CountEpochs()
    metrics = run(params, synthetic_data, tmp_path, extra_callbacks=[counter])
    assert counter.epochs == [1, 2]
    assert metrics["epochs"] == 3
    curve = pd.read_csv(tmp_path / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")
    assert list(curve["step"]) == [0, 1, 2]


def test_a_second_training_in_the_same_workspace_is_refused_and_leaves_the_first_alone(synthetic_data, tmp_path):
    params = small_params(4, epochs=1)
    work_dir = TrainPaths.under(tmp_path).work_dir
    with exclusive_work_dir(work_dir):  # a first training holds the work folder
        (work_dir / "backup").mkdir(parents=True)
        (work_dir / "run_id").write_text("the first run's")
        with pytest.raises(TrainingError, match=r"work.lock: another training is running in this workspace.*"
                                                r"dvc exp run --queue"):
            run(params, synthetic_data, tmp_path)
        assert (work_dir / "run_id").read_text() == "the first run's" and (work_dir / "backup").is_dir()
    assert run(params, synthetic_data, tmp_path)["epochs"] == 1  # released when the first ends


@pytest.mark.slow
def test_changed_params_do_not_resume_an_old_run(synthetic_data, tmp_path):
    params = small_params(4, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run(params, synthetic_data, tmp_path, extra_callbacks=[StopAtEpoch(0)])
    params = params.replaced({"train.lr_max": 1.0e-3})
    counter = CountEpochs()
    run(params, synthetic_data, tmp_path, extra_callbacks=[counter])
    assert counter.epochs == [0, 1]


@pytest.mark.slow
def test_same_seed_same_result(synthetic_data, tmp_path):
    params = small_params(4, epochs=2)
    first = run(params, synthetic_data, tmp_path / "first")
    second = run(params, synthetic_data, tmp_path / "second")
    assert first == second


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_model_predicts_in_float32(synthetic_data, tmp_path, precision):
    params = small_params(4, epochs=1, precision=precision)
    try:
        run(params, synthetic_data, tmp_path)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = keras.models.load_model(tmp_path / "model.keras")
    output = model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0)
    assert output.dtype == np.float32 and output.shape == (1, 64, 64, 1)


def test_oversampling_repeats_the_named_classes():
    positions, labels = np.array([10, 11, 12, 13]), np.array([1, 2, 3, 2])
    def times(meningioma=1, glioma=1, pituitary=1):
        return Oversample(meningioma=meningioma, glioma=glioma, pituitary=pituitary)

    assert oversampled(positions, labels, times()).tolist() == [10, 11, 12, 13]
    assert oversampled(positions, labels, times(glioma=3)).tolist() == [10, 11, 11, 11, 12, 13, 13, 13]
    assert oversampled(positions, labels, times(glioma=2, meningioma=2)).tolist() == [10, 10, 11, 11, 12, 13, 13]


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(synthetic_data, tmp_path):
    params = small_params(4, epochs=2, lr_max=1.0e30, lr_min=1.0e30)
    with pytest.raises(RuntimeError, match="NaN") as raised:
        run(params, synthetic_data, tmp_path)
    assert not (tmp_path / "model.keras").exists()
    checkpoints = list(tmp_path.rglob("best.keras"))
    assert ("no model was kept" in str(raised.value)) == (not checkpoints)
    for checkpoint in checkpoints:  # a checkpoint the message promises holds finite weights
        assert finite_weights(keras.models.load_model(checkpoint, compile=False))


def test_a_nan_checkpoint_is_not_promised_as_the_last_good_model(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    model = keras.models.load_model(identity_model(work / "best.keras", 8), compile=False)
    model.set_weights([np.full_like(weight, np.nan) for weight in model.get_weights()])
    model.save(work / "best.keras")
    history = {"epoch": [0], "loss": [np.nan], "val_loss": [np.nan], "dice": [0.0], "val_dice": [0.0]}
    pd.DataFrame(history).to_csv(work / "history.csv", index=False)
    with pytest.raises(TrainingError, match="at epoch 1; models/ was not written and no epoch ended with a finite"):
        finish(work, tmp_path / "model.keras", tmp_path / "train.json", tmp_path / "plots")
    assert not (work / "best.keras").exists() and not (tmp_path / "model.keras").exists()


def test_the_checkpoint_skips_an_epoch_with_a_nan_loss_or_weights(tmp_path):
    model = keras.models.load_model(identity_model(tmp_path / "start.keras", 8), compile=False)
    checkpoint = CheckpointFromEpoch(tmp_path / "best.keras", monitor="val_loss", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": np.nan, "val_loss": 0.5})
    assert not (tmp_path / "best.keras").exists()
    checkpoint.on_epoch_end(1, {"loss": 0.4, "val_loss": 0.5})
    assert (tmp_path / "best.keras").exists()
    model.set_weights([np.full_like(weight, np.inf) for weight in model.get_weights()])
    (tmp_path / "best.keras").unlink()
    checkpoint.on_epoch_end(2, {"loss": 0.3, "val_loss": 0.2})
    assert not (tmp_path / "best.keras").exists()


def test_an_interrupted_finish_never_leaves_new_model_beside_old_metrics(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "dvclive" / "plots").mkdir(parents=True)
    identity_model(work / "best.keras", 8)
    history = {"epoch": [0, 1], "loss": [0.9, 0.5], "val_loss": [0.8, 0.6], "dice": [0.2, 0.6], "val_dice": [0.3, 0.7],
               "iou": [0.1, 0.4], "val_iou": [0.2, 0.5], "learning_rate": [1e-3, 1e-4]}
    pd.DataFrame(history).to_csv(work / "history.csv", index=False)
    (tmp_path / "train.json").write_text('{"best_epoch": 9}')  # an earlier run's

    def interrupted(history):
        raise KeyboardInterrupt("Ctrl-C while the plots are written")

    monkeypatch.setattr(runs_module, "training_curves_figure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finish(work, tmp_path / "model.keras", tmp_path / "train.json", tmp_path / "plots", 0, ("val_dice", "max"))
    assert (tmp_path / "model.keras").is_file() and not (tmp_path / "train.json").exists()
    monkeypatch.undo()
    metrics = finish(work, tmp_path / "model.keras", tmp_path / "train.json", tmp_path / "plots", 0, ("val_dice", "max"))
    assert metrics["best_epoch"] == 2 and json.loads((tmp_path / "train.json").read_text()) == metrics
    assert not work.exists()
