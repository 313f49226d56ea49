"""train stage: fit the U-Net, keep the best model by validation loss.

Training state lives in a work folder (default checkpoints/train/, not a DVC
output) so an interrupted run resumes from its last completed epoch when the
stage runs again with the same params and split. The DVC outputs, models/,
metrics/train.json and plots/train/, are written only when training ends.
"""

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from dvclive import Live
from dvclive.keras import DVCLiveCallback

from tumorseg.atomic import atomic_dir, atomic_file, write_json
from tumorseg.data import load_arrays, read_split, subset_positions
from tumorseg.dataset import make_dataset
from tumorseg.losses import BceDiceLoss, training_metrics
from tumorseg.model import build_unet, check_image_size
from tumorseg.render import training_curves_figure

SCHEDULES = ("cosine", "exponential", "plateau")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored")


class TrainingError(RuntimeError):
    """Training could not produce a usable model."""


def validate_params(params):
    """Raise ValueError naming the parameter and the fix for inconsistent settings."""
    train, model = params["train"], params["model"]
    lr_max, lr_min = float(train["lr_max"]), float(train["lr_min"])
    if not 0 < lr_min <= lr_max:
        raise ValueError(f"train.lr_min ({lr_min}) must be positive and at most train.lr_max ({lr_max}).")
    loss = train["loss"]
    if float(loss["bce_weight"]) < 0 or float(loss["dice_weight"]) < 0:
        raise ValueError("train.loss.bce_weight and train.loss.dice_weight must not be negative.")
    if float(loss["bce_weight"]) == 0 and float(loss["dice_weight"]) == 0:
        raise ValueError("train.loss.bce_weight and train.loss.dice_weight are both 0: set at least one.")
    for key, allowed in (("lr_schedule", SCHEDULES), ("precision", PRECISIONS), ("strategy", STRATEGIES)):
        if train[key] not in allowed:
            raise ValueError(f"train.{key} must be one of {', '.join(allowed)}, got {train[key]!r}.")
    if int(train["epochs"]) < 1 or int(train["batch_size"]) < 1:
        raise ValueError("train.epochs and train.batch_size must be at least 1.")
    check_image_size(int(params["data"]["image_size"]), int(model["depth"]))


def learning_rate(train, steps_per_epoch):
    """Initial learning rate or schedule, plus the callbacks a schedule needs."""
    lr_max, lr_min = float(train["lr_max"]), float(train["lr_min"])
    total_steps = max(int(train["epochs"]) * steps_per_epoch, 1)
    if train["lr_schedule"] == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr_max, total_steps, alpha=lr_min / lr_max), []
    if train["lr_schedule"] == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr_max, total_steps, lr_min / lr_max), []
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=float(train["plateau_factor"]), patience=int(train["plateau_patience"]),
        min_lr=lr_min, verbose=1,
    )
    return lr_max, [plateau]


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (for DVCLive and the CSV history)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochDVCLiveCallback(DVCLiveCallback):
    """DVCLive's Keras callback with its step tied to the epoch, so a resumed run continues its curves."""

    def on_epoch_end(self, epoch, logs=None):
        self.live.step = epoch
        super().on_epoch_end(epoch, logs)


def get_strategy(name):
    """One device, or MirroredStrategy over every GPU (every logical CPU device when there is no GPU)."""
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


def fingerprint(params, split_csv):
    """Identifies a training run: params that shape it and the split it trains on."""
    relevant = {key: params[key] for key in ("seed", "data", "model", "train")}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    digest.update(Path(split_csv).read_bytes())
    return digest.hexdigest()


def prepare_work_dir(work_dir, run_id):
    """Keep the work folder of an interrupted run with the same id; start afresh otherwise."""
    work_dir = Path(work_dir)
    id_file = work_dir / "run_id"
    resuming = id_file.exists() and id_file.read_text() == run_id and (work_dir / "backup").exists()
    if not resuming:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        id_file.write_text(run_id)
    return resuming


def read_history(path):
    """Per-epoch history across resumed runs (a re-run epoch keeps its last record)."""
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def train(params, numpy_dir="data/numpy", split_csv="data/split.csv", model_path="models/model.keras",
          metrics_path="metrics/train.json", plots_dir="plots/train", work_dir="checkpoints/train",
          extra_callbacks=()):
    validate_params(params)
    train_params, model_params = params["train"], params["model"]
    seed = int(params["seed"])
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(train_params["precision"])

    arrays = load_arrays(numpy_dir)
    split = read_split(split_csv, subsets=("train", "val"))
    train_rows = subset_positions(split, arrays, "train", split_csv)
    val_rows = subset_positions(split, arrays, "val", split_csv)
    train_images, train_masks = arrays["images"][train_rows], arrays["masks"][train_rows]
    val_images, val_masks = arrays["images"][val_rows], arrays["masks"][val_rows]
    batch_size = int(train_params["batch_size"])
    strategy = get_strategy(train_params["strategy"])
    several_replicas = strategy.num_replicas_in_sync > 1
    if several_replicas and min(len(train_images), len(val_images)) < batch_size:
        raise ValueError(
            f"train.strategy=mirrored uses full batches only: the train ({len(train_images)}) and val "
            f"({len(val_images)}) subsets must each hold at least train.batch_size ({batch_size}) slices."
        )
    train_data = make_dataset(train_images, train_masks, batch_size, True, train_params["augment"], seed,
                              drop_remainder=several_replicas)
    # Several replicas cannot share a last, partial batch (a replica may get no slice), so they skip
    # it: model selection then sees up to batch_size - 1 fewer validation slices; evaluate sees all.
    val_data = make_dataset(val_images, val_masks, batch_size, drop_remainder=several_replicas)
    print(f"train: {len(train_images)} slices, val: {len(val_images)} slices")

    work_dir = Path(work_dir)
    resuming = prepare_work_dir(work_dir, fingerprint(params, split_csv))
    history_csv = work_dir / "history.csv"
    best_so_far = read_history(history_csv)["val_loss"].min() if resuming and history_csv.exists() else None
    if resuming:
        print(f"resuming the interrupted run kept in {work_dir}")

    steps_per_epoch = (len(train_images) // batch_size) if several_replicas else math.ceil(len(train_images) / batch_size)
    lr, schedule_callbacks = learning_rate(train_params, steps_per_epoch)
    with strategy.scope():
        model = build_unet(
            int(params["data"]["image_size"]), int(model_params["depth"]), int(model_params["filters"]),
            float(model_params["batchnorm_momentum"]), float(model_params["dropout"]),
        )
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=BceDiceLoss(**{k: float(v) for k, v in train_params["loss"].items()}),
            metrics=training_metrics(),
        )

    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        *schedule_callbacks,
        LearningRateLogger(),
        keras.callbacks.ModelCheckpoint(
            work_dir / "best.keras", monitor="val_loss", save_best_only=True,
            initial_value_threshold=best_so_far if best_so_far is not None and math.isfinite(best_so_far) else None,
        ),
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.BackupAndRestore(work_dir / "backup"),
        EpochDVCLiveCallback(live=Live(str(work_dir / "dvclive"), resume=resuming, dvcyaml=False, save_dvc_exp=False)),
        *extra_callbacks,
    ]
    patience = int(train_params["early_stopping_patience"])
    if patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience))

    model.fit(
        train_data, validation_data=val_data, epochs=int(train_params["epochs"]), callbacks=callbacks,
        shuffle=False,  # train_data shuffles itself, seeded
        verbose=1 if sys.stdout.isatty() else 2,  # a progress bar in a terminal, one line per epoch in logs
    )
    return finish(work_dir, model_path, metrics_path, plots_dir)


def finish(work_dir, model_path, metrics_path, plots_dir):
    """Check the run, then move its results into the DVC outputs."""
    history = read_history(work_dir / "history.csv")
    bad = history[~np.isfinite(history[["loss", "val_loss"]]).all(axis=1)]
    if len(bad) or not (work_dir / "best.keras").exists():
        epoch = int(bad["epoch"].iloc[0]) + 1 if len(bad) else len(history)
        raise TrainingError(
            f"the loss became NaN or infinite at epoch {epoch}; models/ was not written and the last good "
            f"model stays in {work_dir}/best.keras. Lower train.lr_max or use train.precision=float32, "
            f"then delete {work_dir} and run the stage again."
        )
    best = history.loc[history["val_loss"].idxmin()]
    metrics = {"best_epoch": int(best["epoch"]) + 1, "epochs": len(history)}
    metrics.update({key: round(float(best[key]), 5) for key in best.index if key != "epoch"})
    with atomic_file(model_path) as tmp:
        shutil.copyfile(work_dir / "best.keras", tmp)
    write_json(metrics_path, metrics)
    with atomic_dir(plots_dir) as tmp:
        shutil.copytree(work_dir / "dvclive" / "plots", tmp, dirs_exist_ok=True)
        training_curves_figure(history).savefig(tmp / "curves.png")
    shutil.rmtree(work_dir)
    print(f"best epoch {metrics['best_epoch']}: val_loss {metrics['val_loss']}, val_dice {metrics.get('val_dice')}")
    return metrics
