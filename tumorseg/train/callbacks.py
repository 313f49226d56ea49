"""Keras callbacks of the train stage: the mask's metrics under their usual names, the learning rate in the
logs, DVCLive curves per epoch, a checkpoint that ignores a warm-up, and the backup of one training phase."""

import time

import keras
import numpy as np


class MaskMetricNames(keras.callbacks.Callback):
    """With the type head, Keras prefixes each output's metrics with its name (mask_dice, val_mask_iou):
    renames the mask's back to dice, iou, val_dice, val_iou, which train.monitor, the history and the
    plots use. The losses keep their names (loss is the total; mask_loss, tumor_type_loss its parts)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for name in [name for name in (logs or {}) if name.removeprefix("val_") in ("mask_dice", "mask_iou")]:
            logs[name.replace("mask_", "", 1)] = logs.pop(name)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (for DVCLive and the CSV history)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochDVCLiveCallback(keras.callbacks.Callback):
    """Logs each epoch's metrics to DVCLive with the step tied to the epoch, so a resumed run continues its
    curves. The names follow dvclive.keras (loss -> train/loss, val_loss -> eval/loss), whose own callback
    is not used because it imports TensorFlow, which the JAX and PyTorch backends need not have."""

    def __init__(self, live) -> None:
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        from dvclive.utils import standardize_metric_name

        self.live.step = epoch
        for name, value in (logs or {}).items():
            self.live.log_metric(standardize_metric_name(name, "dvclive.keras"), value)
        self.live.next_step()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.live.end()


class CheckpointFromEpoch(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that ignores the epochs before `first_epoch` (a Lovasz warm-up: not comparable) and
    never keeps an epoch whose loss or weights are not finite."""

    def __init__(self, *args, first_epoch: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.first_epoch = first_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        losses = [value for key, value in (logs or {}).items() if key.endswith("loss")]
        if epoch >= self.first_epoch and np.isfinite(losses).all() and finite_weights(self.model):
            super().on_epoch_end(epoch, logs)


class PhaseBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore for one of several fit() calls on the same model (tumorseg.train.phases).

    When it restores an interrupted run, Keras's BackupAndRestore hands the restored epoch to fit() through
    the model's private `_initial_epoch` (Keras 3: set in on_train_begin, read by Trainer.fit) and never
    clears it, so an epoch restored in one phase would override the next phase's `initial_epoch`. Keras
    has no public way to clear it; this is the one place the project touches the attribute: cleared when
    this phase's fit ends.
    """

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self.model._initial_epoch = None


def finite_weights(model: keras.Model) -> bool:
    """Whether every weight of the model is a finite number."""
    return all(np.isfinite(keras.ops.convert_to_numpy(weight)).all() for weight in model.weights)


class StopAtDeadline(keras.callbacks.Callback):
    """Ends training after the epoch during which time.monotonic() passed `deadline`; the best epoch so far
    is kept as usual. For a machine lent for a fixed time (tumorseg.experiments.offline_cv)."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.stopped_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if time.monotonic() >= self.deadline:
            self.stopped_at = epoch + 1
            self.model.stop_training = True
