"""train stage: fit the U-Net, keep the best model by train.monitor (validation Dice or loss).

Training state lives in a work folder (default checkpoints/train/, not a DVC
output) so an interrupted run resumes from its last completed epoch when the
stage runs again with the same params and split. The DVC outputs, models/,
metrics/train.json and plots/train/, are written only when training ends.
"""

import contextlib
import hashlib
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from dvclive import Live
from dvclive.utils import standardize_metric_name

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_dir, atomic_file, write_json
from tumorseg.data import load_arrays, read_split, subset_positions
from tumorseg.batches import make_batches
from tumorseg.encoders import build_model, check_encoder, set_encoder_trainable
from tumorseg.hardware import cpu_flags, precision_warning
from tumorseg.losses import BceDiceLoss, LovaszSchedule, training_metrics
from tumorseg.render import training_curves_figure

SCHEDULES = ("cosine", "exponential", "plateau")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multiworker")
MONITOR_MODES = {"val_dice": "max", "val_loss": "min"}  # train.monitor -> better when higher / lower


class TrainingError(RuntimeError):
    """Training could not produce a usable model."""


def validate_params(params):
    """Raise ValueError naming the parameter and the fix for inconsistent settings."""
    train, model = params["train"], params["model"]
    lr_max, lr_min = float(train["lr_max"]), float(train["lr_min"])
    if not 0 < lr_min <= lr_max:
        raise ValueError(f"train.lr_min ({lr_min}) must be positive and at most train.lr_max ({lr_max}).")
    for key, allowed in (("lr_schedule", SCHEDULES), ("precision", PRECISIONS), ("strategy", STRATEGIES),
                         ("monitor", tuple(MONITOR_MODES))):
        if train[key] not in allowed:
            raise ValueError(f"train.{key} must be one of {', '.join(allowed)}, got {train[key]!r}.")
    if train["strategy"] != "default" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"train.strategy={train['strategy']} needs the TensorFlow backend; under KERAS_BACKEND="
            f"{keras.backend.backend()} use train.strategy=default (one device)."
        )
    if int(train["epochs"]) < 1 or int(train["batch_size"]) < 1:
        raise ValueError("train.epochs and train.batch_size must be at least 1.")
    validate_loss(train["loss"], int(train["epochs"]))
    validate_augment(train.get("augment") or {})
    validate_oversample(train.get("oversample") or {})
    encoder = model.get("encoder") or "none"
    check_encoder(encoder, model.get("encoder_weights", "imagenet"), int(params["data"]["image_size"]),
                  int(model["depth"]))
    validate_fine_tuning(train, encoder)


def validate_loss(loss, epochs):
    if float(loss["bce_weight"]) < 0 or float(loss["dice_weight"]) < 0:
        raise ValueError("train.loss.bce_weight and train.loss.dice_weight must not be negative.")
    if float(loss["bce_weight"]) == 0 and float(loss["dice_weight"]) == 0:
        raise ValueError("train.loss.bce_weight and train.loss.dice_weight are both 0: set at least one.")
    lovasz_weight, lovasz_from = float(loss.get("lovasz_weight", 0.0)), int(loss.get("lovasz_from_epoch", 0))
    if lovasz_weight < 0 or lovasz_from < 0:
        raise ValueError("train.loss.lovasz_weight and train.loss.lovasz_from_epoch must not be negative.")
    if lovasz_weight > 0 and lovasz_from >= epochs:
        raise ValueError(
            f"train.loss.lovasz_from_epoch ({lovasz_from}) must be below train.epochs ({epochs}), "
            "or the Lovasz term never switches on."
        )


def validate_augment(augment):
    if not 0 <= float(augment.get("contrast", 0.0)) < 1:
        raise ValueError(f"train.augment.contrast ({augment['contrast']}) must be in [0, 1).")
    if not 0 <= float(augment.get("rotation", 0.0)) <= 180:
        raise ValueError(f"train.augment.rotation ({augment['rotation']}) must be in [0, 180] degrees.")


def validate_oversample(oversample):
    names = set(LABEL_NAMES.values())
    for name, factor in oversample.items():
        if name not in names:
            raise ValueError(f"train.oversample: unknown class {name!r}; use one of {', '.join(sorted(names))}.")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"train.oversample.{name} must be a whole number >= 1 (times per epoch), got {factor!r}.")


def oversampled(positions, labels, oversample):
    """`positions` with those of each class in `oversample` repeated that many times (per epoch).

    `labels` are the class labels of `positions`; classes not named appear once.
    """
    label_of = {name: label for label, name in LABEL_NAMES.items()}
    times = np.ones(len(positions), dtype=np.int64)
    for name, factor in (oversample or {}).items():
        times[np.asarray(labels) == label_of[name]] = int(factor)
    return np.repeat(np.asarray(positions), times)


def validate_fine_tuning(train, encoder):
    frozen, epochs = int(train.get("freeze_encoder_epochs", 0)), int(train["epochs"])
    if not 0 <= frozen <= epochs:
        raise ValueError(f"train.freeze_encoder_epochs ({frozen}) must be between 0 and train.epochs ({epochs}).")
    if frozen and encoder == "none":
        raise ValueError("train.freeze_encoder_epochs needs a pretrained model.encoder; set it to 0 with encoder none.")
    if float(train.get("finetune_lr_factor", 0.1)) <= 0:
        raise ValueError("train.finetune_lr_factor must be positive.")


def monitor_settings(train):
    """(metric name, "min" or "max") of train.monitor, the metric that picks the kept epoch."""
    monitor = train.get("monitor", "val_loss")
    return monitor, MONITOR_MODES[monitor]


def learning_rate(train, steps_per_epoch, factor=1.0, plateau_start=None):
    """Initial learning rate or schedule, plus the callbacks a schedule needs.

    `factor` scales the whole schedule (lr_max and lr_min) for fine-tuning. A
    decay schedule is a function of the optimizer's step count, so a new
    optimizer continues it when its step count starts where the last one ended.
    The plateau schedule starts at `plateau_start` (default lr_max) times `factor`.
    """
    lr_max, lr_min = float(train["lr_max"]) * factor, float(train["lr_min"]) * factor
    total_steps = max(int(train["epochs"]) * steps_per_epoch, 1)
    if train["lr_schedule"] == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr_max, total_steps, alpha=lr_min / lr_max), []
    if train["lr_schedule"] == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr_max, total_steps, lr_min / lr_max), []
    monitor, mode = monitor_settings(train)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode=mode, factor=float(train["plateau_factor"]), patience=int(train["plateau_patience"]),
        min_lr=lr_min, verbose=1,
    )
    return (lr_max if plateau_start is None else float(plateau_start) * factor), [plateau]


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (for DVCLive and the CSV history)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochDVCLiveCallback(keras.callbacks.Callback):
    """Logs each epoch's metrics to DVCLive with the step tied to the epoch, so a resumed run continues its
    curves. The names follow dvclive.keras (loss -> train/loss, val_loss -> eval/loss), whose own callback
    is not used because it imports TensorFlow, which the JAX and PyTorch backends need not have."""

    def __init__(self, live):
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch, logs=None):
        self.live.step = epoch
        for name, value in (logs or {}).items():
            self.live.log_metric(standardize_metric_name(name, "dvclive.keras"), value)
        self.live.next_step()

    def on_train_end(self, logs=None):
        self.live.end()


class CheckpointFromEpoch(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that ignores the epochs before `first_epoch` (a Lovasz warm-up: not comparable)."""

    def __init__(self, *args, first_epoch=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_epoch = first_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.first_epoch:
            super().on_epoch_end(epoch, logs)


@dataclass(frozen=True)
class Phase:
    """One fit() call: epochs [first, end), the encoder trained or frozen, the rate scaled by lr_factor."""

    first: int
    end: int
    train_encoder: bool
    lr_factor: float
    backup: str  # BackupAndRestore folder, relative to the work folder


def training_phases(train_params):
    """One phase; with train.freeze_encoder_epochs, decoder-only epochs and then fine-tuning at a lower rate.

    Unfreezing takes effect only at a recompile, which Keras 3 does not allow
    inside fit(), so each phase is its own fit() call starting at its first
    epoch, with its own backup folder: a run interrupted while fine-tuning
    resumes there, one interrupted earlier resumes the frozen phase.
    """
    epochs, frozen = int(train_params["epochs"]), int(train_params.get("freeze_encoder_epochs", 0))
    if frozen == 0:
        return [Phase(0, epochs, True, 1.0, "backup")]
    phases = [Phase(0, frozen, False, 1.0, "backup/frozen")]
    if frozen < epochs:
        factor = float(train_params.get("finetune_lr_factor", 0.1))
        phases.append(Phase(frozen, epochs, True, factor, "backup/finetune"))
    return phases


def phases_to_run(phases, work_dir):
    """The phases left: from the latest one that has a backup (those before it are complete)."""
    started = [index for index, phase in enumerate(phases) if (Path(work_dir) / phase.backup).exists()]
    return phases[max(started, default=0):]


def make_loss(loss_params):
    """The BceDiceLoss of train.loss."""
    return BceDiceLoss(
        bce_weight=float(loss_params["bce_weight"]), dice_weight=float(loss_params["dice_weight"]),
        smooth=float(loss_params["smooth"]), lovasz_weight=float(loss_params.get("lovasz_weight", 0.0)),
        lovasz_from_epoch=int(loss_params.get("lovasz_from_epoch", 0)),
    )


def first_compared_epoch(loss):
    """Validation losses are comparable from this epoch on: before a Lovasz warm-up ends they lack that term."""
    return loss.lovasz_from_epoch if loss.lovasz_weight else 0


def best_epoch_row(history, first_epoch, monitor, mode):
    """The history row of the best `monitor` value from `first_epoch` on (None when there is none)."""
    values = history.loc[history["epoch"] >= first_epoch, monitor]
    values = values[np.isfinite(values)]
    if values.empty:
        return None
    return history.loc[values.idxmax() if mode == "max" else values.idxmin()]


def best_monitored(history_csv, first_epoch, monitor, mode):
    """Best finite `monitor` value recorded from `first_epoch` on (a resumed run's bar to beat), else None."""
    if not Path(history_csv).exists():
        return None
    best = best_epoch_row(read_history(history_csv), first_epoch, monitor, mode)
    return None if best is None else float(best[monitor])


class OneDevice:
    """The strategy of a backend without tf.distribute (JAX, PyTorch): one device, one replica."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def get_strategy(name):
    """One device; MirroredStrategy over every GPU (every logical CPU device when there is no GPU); or
    MultiWorkerMirroredStrategy over the machines TF_CONFIG lists. Other backends than TensorFlow: one device."""
    if keras.backend.backend() != "tensorflow":
        return OneDevice()
    import tensorflow as tf

    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def has_accelerator():
    """Whether the Keras backend in use computes on a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def make_deterministic(seed):
    """Seed Python, numpy and the backend; on TensorFlow also deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fingerprint(params, split_csv):
    """Identifies a training run: params that shape it and the split it trains on."""
    relevant = {key: params[key] for key in ("seed", "data", "model", "train")}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    digest.update(Path(split_csv).read_bytes())
    return digest.hexdigest()


def data_digest(*arrays):
    """Identifies the arrays a run trains on."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def backup_epoch(work_dir):
    """The epoch that the run kept in `work_dir` resumes from (-1: none)."""
    paths = Path(work_dir).glob("backup/**/training_metadata.json")
    return max((int(json.loads(path.read_text())["epoch"]) for path in paths), default=-1)


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
    multiworker = None
    if train_params["strategy"] == "multiworker":
        from tumorseg import multiworker  # TensorFlow's multi-worker strategy and its Keras workaround
    task = multiworker.cluster_task() if multiworker else None
    chief = task is None or task.chief
    scratch = None if chief else task.scratch_dir(work_dir)
    if scratch:  # the chief writes the outputs and the DVCLive curves; this worker's go to its scratch folder
        model_path, metrics_path, plots_dir = scratch / "model.keras", scratch / "train.json", scratch / "plots"
        work_dir = scratch / "work"
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything
    strategy = get_strategy(train_params["strategy"])
    seed = int(params["seed"])
    make_deterministic(seed)
    keras.mixed_precision.set_global_policy(train_params["precision"])
    warning = precision_warning(train_params["precision"], cpu_flags(), has_accelerator())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    arrays = load_arrays(numpy_dir)
    split = read_split(split_csv, subsets=("train", "val"))
    train_rows = subset_positions(split, arrays, "train", split_csv)
    train_rows = oversampled(train_rows, np.asarray(arrays["labels"])[train_rows], train_params.get("oversample"))
    val_rows = subset_positions(split, arrays, "val", split_csv)
    train_images, train_masks = arrays["images"][train_rows], arrays["masks"][train_rows]
    val_images, val_masks = arrays["images"][val_rows], arrays["masks"][val_rows]
    batch_size = int(train_params["batch_size"])
    replicas = strategy.num_replicas_in_sync
    several_replicas = replicas > 1
    if batch_size % replicas:
        raise ValueError(
            f"train.strategy={train_params['strategy']} splits every batch equally across {replicas} replicas: "
            f"set train.batch_size ({batch_size}) to a multiple of {replicas}."
        )
    if several_replicas and min(len(train_images), len(val_images)) < batch_size:
        raise ValueError(
            f"train.strategy={train_params['strategy']} uses full batches only: the train ({len(train_images)}) and val "
            f"({len(val_images)}) subsets must each hold at least train.batch_size ({batch_size}) slices."
        )
    train_data = make_batches(train_images, train_masks, batch_size, True, train_params["augment"], seed,
                              drop_remainder=several_replicas)
    # Several replicas cannot share a last, partial batch (a replica may get no slice), so they skip
    # it: model selection then sees up to batch_size - 1 fewer validation slices; evaluate sees all.
    val_data = make_batches(val_images, val_masks, batch_size, drop_remainder=several_replicas)
    print(f"train: {len(train_images)} slices, val: {len(val_images)} slices")

    work_dir = Path(work_dir)
    run_id = fingerprint(params, split_csv)
    resuming = prepare_work_dir(work_dir, run_id)
    history_csv = work_dir / "history.csv"
    if resuming:
        print(f"resuming the interrupted run kept in {work_dir}")
    if task:
        run_state = run_id + data_digest(train_images, train_masks, val_images, val_masks)
        multiworker.check_workers_agree(strategy, run_state, backup_epoch(work_dir))

    steps_per_epoch = (len(train_images) // batch_size) if several_replicas else math.ceil(len(train_images) / batch_size)
    with strategy.scope():
        model = build_model(params)
        loss = make_loss(train_params["loss"])
    has_encoder = (model_params.get("encoder") or "none") != "none"
    live = Live(str(work_dir / "dvclive"), resume=resuming, dvcyaml=False, save_dvc_exp=False) if chief else None
    first_epoch = first_compared_epoch(loss)
    monitor, mode = monitor_settings(train_params)
    patience = int(train_params["early_stopping_patience"])
    phases = training_phases(train_params)
    plateau_lr = None
    for phase in phases_to_run(phases, work_dir):
        lr, schedule_callbacks = learning_rate(train_params, steps_per_epoch, phase.lr_factor, plateau_lr)
        with strategy.scope():
            if has_encoder:
                set_encoder_trainable(model, phase.train_encoder)
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=training_metrics())
            if task:
                multiworker.allow_fit(model)
            if phase.first:  # the decay schedule continues where the last phase left it
                model.optimizer.iterations.assign(phase.first * steps_per_epoch)
        callbacks = [
            *([LovaszSchedule(loss)] if loss.lovasz_weight else []),
            keras.callbacks.TerminateOnNaN(),
            *schedule_callbacks,
            LearningRateLogger(),
            CheckpointFromEpoch(
                work_dir / "best.keras", monitor=monitor, mode=mode, save_best_only=True, first_epoch=first_epoch,
                initial_value_threshold=best_monitored(history_csv, first_epoch, monitor, mode),
            ),
            keras.callbacks.CSVLogger(history_csv, append=True),
            # a phase followed by another keeps its backup: interrupted before the next phase's first
            # backup, the run resumes from the end of this one
            keras.callbacks.BackupAndRestore(work_dir / phase.backup, delete_checkpoint=phase is phases[-1]),
            *([EpochDVCLiveCallback(live=live)] if live else []),
            *extra_callbacks,
        ]
        if patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience,
                                              start_from_epoch=first_epoch)
            )
        # BackupAndRestore passes the restored epoch to fit() in this attribute, which Keras never
        # clears: reset it, or an epoch restored in the frozen phase would override the next start.
        model._initial_epoch = None
        with strategy.scope():
            model.fit(
                train_data, validation_data=val_data, initial_epoch=phase.first, epochs=phase.end,
                callbacks=callbacks,
                shuffle=False,  # train_data shuffles itself, seeded
                verbose=1 if sys.stdout.isatty() else 2,  # a progress bar in a terminal, one line per epoch in logs
            )
        plateau_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    metrics = finish(work_dir, model_path, metrics_path, plots_dir, first_epoch, (monitor, mode),
                     with_dvclive_plots=chief)
    if scratch:
        shutil.rmtree(scratch)
    return metrics


def save_for_inference(checkpoint, path):
    """Save the checkpoint's model without its training configuration (loss, metrics, optimizer state).

    The published model then loads with plain `keras.models.load_model`, in a
    notebook that never imports this package.
    """
    model = keras.models.load_model(checkpoint, compile=False)
    model.save(path)


def finish(work_dir, model_path, metrics_path, plots_dir, first_epoch=0, monitored=("val_loss", "min"),
           with_dvclive_plots=True):
    """Check the run, then move its results into the DVC outputs (best `monitored` epoch from `first_epoch` on)."""
    history = read_history(work_dir / "history.csv")
    bad = history[~np.isfinite(history[["loss", "val_loss"]]).all(axis=1)]
    if len(bad) or not (work_dir / "best.keras").exists():
        epoch = int(bad["epoch"].iloc[0]) + 1 if len(bad) else len(history)
        raise TrainingError(
            f"the loss became NaN or infinite at epoch {epoch}; models/ was not written and the last good "
            f"model stays in {work_dir}/best.keras. Lower train.lr_max or use train.precision=float32, "
            f"then delete {work_dir} and run the stage again."
        )
    best = best_epoch_row(history, first_epoch, *monitored)
    metrics = {"best_epoch": int(best["epoch"]) + 1, "epochs": len(history)}
    metrics.update({key: round(float(best[key]), 5) for key in best.index if key != "epoch"})
    # The metrics go first and come back last: an interruption leaves no metrics beside a new model.
    Path(metrics_path).unlink(missing_ok=True)
    with atomic_file(model_path) as tmp:
        save_for_inference(work_dir / "best.keras", tmp)
    with atomic_dir(plots_dir) as tmp:
        if with_dvclive_plots:
            shutil.copytree(work_dir / "dvclive" / "plots", tmp, dirs_exist_ok=True)
        training_curves_figure(history).savefig(tmp / "curves.png")
    write_json(metrics_path, metrics)
    shutil.rmtree(work_dir)
    print(f"best epoch {metrics['best_epoch']}: val_loss {metrics['val_loss']}, val_dice {metrics.get('val_dice')}")
    return metrics
