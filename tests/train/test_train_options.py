"""Train-stage options: frozen-encoder phase then fine-tuning (with resume), progressive resizing (with resume),
Lovasz warm-up, bad option values."""

import keras
import numpy as np
import pandas as pd
import pytest

from tests.helpers import StopAtEpoch, make_params, write_tiny_dataset
from tumorseg.train.loop import TrainPaths, train

SIZE = 32


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """36 slices of 32x32 with a bright square tumour, 12 patients split by patient."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), SIZE)


def tiny_params(model=None, loss=None, **train_overrides):
    train = {"epochs": 3, "batch_size": 8, "lr_max": 1.0e-3, "lr_min": 1.0e-4, "loss": loss or {}, **train_overrides}
    return make_params({"data.image_size": SIZE, "model": {"depth": 2, "filters": 4, **(model or {})}, "train": train})


def run(params, data, out, **kwargs):
    return train(params, TrainPaths.under(out, data / "numpy", data / "split.csv"), **kwargs)


VGG = {"encoder": "vgg16", "encoder_weights": "none"}


class WatchEncoder(keras.callbacks.Callback):
    """Per epoch: the epoch, whether the encoder is trainable, whether its first kernel changed."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def kernel(self):
        return np.array(self.model.get_layer("encoder").get_layer("block1_conv1").get_weights()[0])

    def on_epoch_begin(self, epoch, logs=None):
        self.before = self.kernel()

    def on_epoch_end(self, epoch, logs=None):
        trainable = self.model.get_layer("encoder").trainable
        self.epochs.append((epoch, trainable, not np.array_equal(self.before, self.kernel())))


@pytest.mark.slow
def test_encoder_is_frozen_then_fine_tuned_at_a_lower_rate(tiny_data, tmp_path):
    params = tiny_params(VGG, freeze_encoder_epochs=1, finetune_lr_factor=0.1)
    watch = WatchEncoder()
    metrics = run(params, tiny_data, tmp_path, extra_callbacks=[watch])
    assert watch.epochs == [(0, False, False), (1, True, True), (2, True, True)]
    assert metrics["epochs"] == 3
    steps = 3  # 18 training slices in batches of 8
    schedule = keras.optimizers.schedules.CosineDecay(1.0e-3, 3 * steps, alpha=0.1)
    expected = [float(schedule(steps)), 0.1 * float(schedule(2 * steps)), 0.1 * float(schedule(3 * steps))]
    lr = pd.read_csv(tmp_path / "plots" / "metrics" / "train" / "learning_rate.tsv", sep="\t")["learning_rate"]
    np.testing.assert_allclose(lr, expected, rtol=1e-4)


class CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append((epoch, self.model.get_layer("encoder").trainable))


@pytest.mark.parametrize(
    "stop_after, resumed, encoder_lr_factor",
    [(0, [(1, True), (2, True)], 1.0), (1, [(2, True)], 1.0), (1, [(2, True)], 0.1)],
    ids=["end of the frozen phase", "during fine-tuning", "during fine-tuning, the encoder at a tenth of the rate"],
)
@pytest.mark.slow
def test_interrupted_fine_tuning_resumes_in_the_right_phase(tiny_data, tmp_path, stop_after, resumed,
                                                            encoder_lr_factor):
    params = tiny_params(VGG, freeze_encoder_epochs=1, encoder_lr_factor=encoder_lr_factor)
    with pytest.raises(KeyboardInterrupt):
        run(params, tiny_data, tmp_path, extra_callbacks=[StopAtEpoch(stop_after)])
    counter = CountEpochs()
    metrics = run(params, tiny_data, tmp_path, extra_callbacks=[counter])
    assert counter.epochs == resumed
    assert metrics["epochs"] == 3
    curve = pd.read_csv(tmp_path / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")
    assert list(curve["step"]) == [0, 1, 2]


class WatchSize(keras.callbacks.Callback):
    """Per epoch: the epoch, the model's input size, whether the first kernel is the one the last epoch left."""

    def __init__(self):
        super().__init__()
        self.epochs, self.last_kernel = [], None

    def kernel(self):
        return np.array(self.model.layers[1].get_weights()[0])

    def on_epoch_begin(self, epoch, logs=None):
        carried = self.last_kernel is not None and np.array_equal(self.last_kernel, self.kernel())
        self.epochs.append((epoch, self.model.input_shape[1], carried))

    def on_epoch_end(self, epoch, logs=None):
        self.last_kernel = self.kernel()


@pytest.mark.slow
def test_progressive_resizing_trains_small_then_goes_on_at_full_size_and_resumes_there(tiny_data, tmp_path):
    params = tiny_params(progressive={"size": SIZE // 2, "epochs": 1})
    watch = WatchSize()
    with pytest.raises(KeyboardInterrupt):
        run(params, tiny_data, tmp_path, extra_callbacks=[watch, StopAtEpoch(1)])
    # epoch 0 on 16x16 slices, then the same weights go on at 32x32
    assert watch.epochs == [(0, SIZE // 2, False), (1, SIZE, True)]
    resumed = WatchSize()
    metrics = run(params, tiny_data, tmp_path, extra_callbacks=[resumed])
    assert [(epoch, size) for epoch, size, _ in resumed.epochs] == [(2, SIZE)]  # from the full-size backup
    assert metrics["epochs"] == 3 and metrics["best_epoch"] >= 2  # small-slice epochs are not compared
    assert keras.models.load_model(tmp_path / "model.keras").input_shape == (None, SIZE, SIZE, 1)
    steps = 3  # 18 training slices in batches of 8: the cosine schedule runs on across the phases
    schedule = keras.optimizers.schedules.CosineDecay(1.0e-3, 3 * steps, alpha=0.1)
    lr = pd.read_csv(tmp_path / "plots" / "metrics" / "train" / "learning_rate.tsv", sep="\t")["learning_rate"]
    np.testing.assert_allclose(lr, [float(schedule(epoch * steps)) for epoch in (1, 2, 3)], rtol=1e-4)


@pytest.mark.slow
def test_lovasz_warm_up_and_model_selection_after_it(tiny_data, tmp_path):
    params = tiny_params(epochs=3, loss={"lovasz_weight": 2.0, "lovasz_from_epoch": 1})
    metrics = run(params, tiny_data, tmp_path)
    loss = pd.read_csv(tmp_path / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")["loss"]
    assert loss[1] > loss[0]  # the Lovasz term joins at epoch 1
    assert metrics["best_epoch"] >= 2  # warm-up epochs lack the term: not compared
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.loss is None  # published for inference, without the training loss


@pytest.mark.parametrize(
    "model, message",
    [
        ({"encoder": "vgg16", "encoder_weights": "no/such/file.h5"}, "not found"),
        ({"encoder": "resnet50", "depth": 6}, "downsamples 5 times"),
    ],
)
def test_encoder_settings_it_cannot_serve_fail_before_any_work(model, message, tmp_path):
    params = make_params({"data.image_size": 64, "model": model})
    with pytest.raises(ValueError, match=message):
        train(params, TrainPaths(tmp_path / "absent", tmp_path / "absent.csv", work_dir=tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_a_passed_deadline_ends_training_after_the_epoch_and_keeps_its_best(tiny_data, tmp_path):
    import time

    from tumorseg.train.callbacks import StopAtDeadline

    stop = StopAtDeadline(time.monotonic())  # already passed: the first epoch is the last
    metrics = run(tiny_params(), tiny_data, tmp_path / "out", extra_callbacks=[stop], dvclive=False)
    assert stop.stopped_at == 1 and metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert (tmp_path / "out" / "model.keras").is_file() and (tmp_path / "out" / "plots" / "curves.png").is_file()
    assert not (tmp_path / "out" / "plots" / "metrics").exists()  # dvclive=False: no DVCLive curves
