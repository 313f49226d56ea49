"""train stage: fit the U-Net, keep the best model by train.monitor (validation Dice or loss).

Training state lives in a work folder (default checkpoints/train/, not a DVC
output) so an interrupted run resumes from its last completed epoch when the
stage runs again with the same params and split (tumorseg.train.phases). The DVC outputs,
models/, metrics/train.json and plots/train/, are written only when training ends.
"""

import math
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from tumorseg.bundle import DEFAULT_FOLDER, MODEL_FILE, PREPROCESSING_FILE, Preprocessing
from tumorseg.config import ConfigError, Oversample, Params, Train
from tumorseg.data.arrays import load_arrays, read_split, subset_positions
from tumorseg.data.preprocess import shrink
from tumorseg.model.build import build_model, compile_model, load_initial_weights, make_loss, mask_targets
from tumorseg.model.encoders import check_encoder, set_encoder_trainable
from tumorseg.model.losses import BceDiceLoss, LovaszSchedule
from tumorseg.train.batches import make_batches
from tumorseg.train.callbacks import (
    CheckpointFromEpoch,
    EpochDVCLiveCallback,
    LearningRateLogger,
    MaskMetricNames,
    PhaseBackupAndRestore,
)
from tumorseg.train.devices import (
    check_backend,
    cpu_flags,
    get_strategy,
    has_accelerator,
    make_deterministic,
    precision_warning,
)
from tumorseg.train.history import best_monitored
from tumorseg.train.phases import (
    Phase,
    backup_epoch,
    data_digest,
    exclusive_work_dir,
    fingerprint,
    finish,
    phases_to_run,
    prepare_work_dir,
    training_phases,
)

if TYPE_CHECKING:
    from dvclive import Live


@dataclass(frozen=True)
class TrainPaths:
    """Where training reads and writes; the defaults are the DVC stage's (dvc.yaml)."""

    numpy_dir: Path = Path("data/numpy")
    split_csv: Path = Path("data/split.csv")
    bundle: Path = DEFAULT_FOLDER  # the model folder: model.keras and preprocessing.json (tumorseg.bundle)
    metrics: Path = Path("metrics/train.json")
    plots: Path = Path("plots/train")
    work_dir: Path = Path("checkpoints/train")

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, Path(getattr(self, name)))

    @property
    def model(self) -> Path:
        return self.bundle / MODEL_FILE

    @property
    def preprocessing(self) -> Path:
        return self.bundle / PREPROCESSING_FILE

    @classmethod
    def under(cls, folder: str | Path, numpy_dir: str | Path | None = None,
              split_csv: str | Path | None = None) -> "TrainPaths":
        """Every output under `folder` (the model folder itself: model.keras, preprocessing.json; train.json,
        plots/, work/); inputs there too unless given."""
        folder = Path(folder)
        return cls(numpy_dir or folder / "numpy", split_csv or folder / "split.csv", folder,
                   folder / "train.json", folder / "plots", folder / "work")

    def for_worker(self, scratch: str | Path) -> "TrainPaths":
        """The same inputs, and a non-chief worker's throwaway outputs under `scratch`."""
        return TrainPaths.under(scratch, self.numpy_dir, self.split_csv)


def oversampled(positions: np.ndarray, labels: np.ndarray, oversample: Oversample) -> np.ndarray:
    """`positions` with each slice repeated as many times per epoch as train.oversample says for its class."""
    return np.repeat(np.asarray(positions), [oversample.times(label) for label in np.asarray(labels)])


def learning_rate(
    train: Train, steps_per_epoch: int, factor: float = 1.0, plateau_start: float | None = None,
) -> tuple[float | keras.optimizers.schedules.LearningRateSchedule, list[keras.callbacks.Callback]]:
    """Initial learning rate or schedule, plus the callbacks a schedule needs.

    `factor` scales the whole schedule (lr_max and lr_min) for fine-tuning. A
    decay schedule is a function of the optimizer's step count, so a new
    optimizer continues it when its step count starts where the last one ended.
    The plateau schedule starts at `plateau_start` (default lr_max) times `factor`.
    """
    lr_max, lr_min = train.lr_max * factor, train.lr_min * factor
    total_steps = max(train.epochs * steps_per_epoch, 1)
    if train.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr_max, total_steps, alpha=lr_min / lr_max), []
    if train.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr_max, total_steps, lr_min / lr_max), []
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor=train.monitor, mode=train.monitor_mode, factor=train.plateau_factor,
        patience=train.plateau_patience, min_lr=lr_min, verbose=1,
    )
    return (lr_max if plateau_start is None else plateau_start * factor), [plateau]


def training_arrays(params: Params, numpy_dir: str | Path, split_csv: str | Path,
                    replicas: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(images, masks, labels) of the train slices (oversampled) and of the val slices of the split; labels
    only with model.classify. Several replicas need full batches: checked here."""
    train = params.train
    arrays = load_arrays(numpy_dir)
    split = read_split(split_csv, subsets=("train", "val"))
    train_rows = subset_positions(split, arrays, "train", split_csv)
    train_rows = oversampled(train_rows, np.asarray(arrays["labels"])[train_rows], train.oversample)
    val_rows = subset_positions(split, arrays, "val", split_csv)
    if train.batch_size % replicas:
        raise ConfigError(f"train.strategy={train.strategy} splits every batch equally across {replicas} "
                          f"replicas: set train.batch_size ({train.batch_size}) to a multiple of {replicas}.")
    if replicas > 1 and min(len(train_rows), len(val_rows)) < train.batch_size:
        raise ConfigError(f"train.strategy={train.strategy} uses full batches only: the train ({len(train_rows)}) "
                          f"and val ({len(val_rows)}) subsets must each hold at least train.batch_size "
                          f"({train.batch_size}) slices.")
    print(f"train: {len(train_rows)} slices, val: {len(val_rows)} slices")
    labels = np.asarray(arrays["labels"])
    return [(arrays["images"][rows], arrays["masks"][rows], labels[rows] if params.model.classify else None)
            for rows in (train_rows, val_rows)]


def training_batches(params: Params, subsets: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], replicas: int,
                     size: int | None = None):
    """(train batches, val batches) of training_arrays' `subsets`, shrunk to `size` px if given; training
    data shuffled and augmented. Several replicas cannot share a last, partial batch (a replica may get no
    slice), so they skip it: model selection then sees up to batch_size - 1 fewer validation slices;
    evaluate sees all."""
    train = params.train
    (train_images, train_masks, train_labels), (val_images, val_masks, val_labels) = subsets
    if size:
        train_images, train_masks = shrink(train_images, train_masks, size)
        val_images, val_masks = shrink(val_images, val_masks, size)
    several, targets = replicas > 1, mask_targets(params)
    train_data = make_batches(train_images, train_masks, train.batch_size, True, train.augment, params.seed,
                              drop_remainder=several, labels=train_labels, mask_outputs=targets, crop=train.crop)
    val_data = make_batches(val_images, val_masks, train.batch_size, drop_remainder=several, labels=val_labels,
                            mask_outputs=targets)
    return train_data, val_data


def phase_callbacks(phase: Phase, last: bool, train: Train, loss: BceDiceLoss, work_dir: Path, live: "Live | None",
                    schedule_callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    first_epoch = train.first_compared_epoch
    history_csv = work_dir / "history.csv"
    callbacks = [
        MaskMetricNames(),  # first: the callbacks after it read the mask's metrics by their usual names
        *([LovaszSchedule(loss)] if loss.lovasz_weight else []),
        keras.callbacks.TerminateOnNaN(),
        *schedule_callbacks,
        LearningRateLogger(),
        CheckpointFromEpoch(
            work_dir / "best.keras", monitor=train.monitor, mode=train.monitor_mode, save_best_only=True,
            first_epoch=first_epoch,
            initial_value_threshold=best_monitored(history_csv, first_epoch, train.monitor, train.monitor_mode),
        ),
        keras.callbacks.CSVLogger(history_csv, append=True),
        # a phase followed by another keeps its backup: interrupted before the next phase's first
        # backup, the run resumes from the end of this one
        PhaseBackupAndRestore(work_dir / phase.backup, delete_checkpoint=last),
        *([EpochDVCLiveCallback(live=live)] if live else []),
    ]
    if train.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=train.monitor, mode=train.monitor_mode,
                                                       patience=train.early_stopping_patience,
                                                       start_from_epoch=first_epoch))
    return callbacks


def fit_phases(model: keras.Model, loss: BceDiceLoss, params: Params, batches: Callable[[int | None], tuple],
               steps_per_epoch: int, strategy, work_dir: Path, live: "Live | None",
               prepare_fit: Callable[[keras.Model], None] | None,
               extra_callbacks: Iterable[keras.callbacks.Callback]) -> None:
    """Compile and fit each phase left to run, continuing the LR schedule. `batches(size)` gives a phase's
    (train, val) batches; a phase on another slice size goes on with the same weights in a model built for it."""
    phases = training_phases(params.train)
    plateau_lr = None
    for phase in phases_to_run(phases, work_dir):
        size = phase.size or params.data.image_size
        if model.input_shape[1] not in (size, None):  # None: a model for any size (train.crop)
            with strategy.scope():
                resized = build_model(params, size)
                resized.set_weights(model.get_weights())
            model = resized
        train_data, val_data = batches(phase.size)
        lr, schedule_callbacks = learning_rate(params.train, steps_per_epoch, phase.lr_factor, plateau_lr)
        with strategy.scope():
            if params.model.encoder != "none":
                set_encoder_trainable(model, phase.train_encoder)
            compile_model(model, params, loss, lr)
            if prepare_fit:
                prepare_fit(model)
            if phase.first:  # the decay schedule continues where the last phase left it
                model.optimizer.iterations.assign(phase.first * steps_per_epoch)
        callbacks = phase_callbacks(phase, phase is phases[-1], params.train, loss, work_dir, live,
                                    schedule_callbacks) + list(extra_callbacks)
        with strategy.scope():
            model.fit(train_data, validation_data=val_data, initial_epoch=phase.first, epochs=phase.end,
                      callbacks=callbacks, shuffle=False,  # train_data shuffles itself, seeded
                      verbose=1 if sys.stdout.isatty() else 2)  # a progress bar in a terminal, a line per epoch in logs
        plateau_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def train(params: Params, paths: TrainPaths = TrainPaths(),
          extra_callbacks: Iterable[keras.callbacks.Callback] = (), dvclive: bool = True) -> dict[str, float]:
    """Fit the model of `params` on the split's train slices; returns the metrics written to paths.metrics.

    dvclive=False: no DVCLive curves in paths.plots (the CSV history and curves.png stay), for machines
    without DVC, such as an offline GPU machine (tumorseg.experiments.offline_cv)."""
    train_params, model_params = params.train, params.model
    check_backend(train_params.strategy)
    check_encoder(model_params.encoder, model_params.encoder_weights, params.data.image_size, model_params.depth,
                  model_params.full_resolution_skip)
    multiworker = None
    if train_params.strategy == "multiworker":
        from tumorseg.train import (
            multiworker,  # TensorFlow's multi-worker strategy and its Keras workaround
        )
    task = multiworker.cluster_task() if multiworker else None
    scratch = task.scratch_dir(paths.work_dir) if task and not task.chief else None
    if scratch:  # the chief writes the outputs and the DVCLive curves; this worker's go to its scratch folder
        paths = paths.for_worker(scratch)
    strategy = get_strategy(train_params.strategy)  # MultiWorkerMirroredStrategy: before TensorFlow runs anything
    make_deterministic(params.seed)
    keras.mixed_precision.set_global_policy(train_params.precision)
    warning = precision_warning(train_params.precision, cpu_flags(), has_accelerator())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    replicas = strategy.num_replicas_in_sync
    subsets = training_arrays(params, paths.numpy_dir, paths.split_csv, replicas)
    train_rows = len(subsets[0][0])
    steps = train_rows // train_params.batch_size if replicas > 1 else math.ceil(train_rows / train_params.batch_size)
    work_dir = paths.work_dir
    with exclusive_work_dir(work_dir):  # before anything in it changes
        run_id = fingerprint(params, paths.split_csv)
        resuming = prepare_work_dir(work_dir, run_id)
        if resuming:
            print(f"resuming the interrupted run kept in {work_dir}")
        if task:
            digest = data_digest(*(array for images, masks, _ in subsets for array in (images, masks)))
            multiworker.check_workers_agree(strategy, run_id + digest, backup_epoch(work_dir))
        with strategy.scope():
            model = build_model(params)
            if train_params.init_from and not resuming:  # a resumed run restores its own weights
                load_initial_weights(model, train_params.init_from)
                print(f"initial weights from {train_params.init_from}")
            loss = make_loss(train_params.loss)
        curves = dvclive and (task is None or task.chief)
        live = None
        if curves:
            from dvclive import Live

            live = Live(str(work_dir / "dvclive"), resume=resuming, dvcyaml=False, save_dvc_exp=False)
        fit_phases(model, loss, params, partial(training_batches, params, subsets, replicas), steps, strategy,
                   work_dir, live, multiworker.allow_fit if task else None, extra_callbacks)
        paths.preprocessing.unlink(missing_ok=True)  # written again with the new model
        metrics = finish(work_dir, paths.model, paths.metrics, paths.plots, train_params.first_compared_epoch,
                         (train_params.monitor, train_params.monitor_mode), with_dvclive_plots=curves,
                         image_size=params.data.image_size)
        Preprocessing.from_params(params).save(paths.preprocessing)
    if scratch:
        shutil.rmtree(scratch)
    return metrics
