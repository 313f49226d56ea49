"""The state of a training run kept in its work folder, so an interrupted run resumes where it stopped,
and the move of a finished run into the DVC outputs.

A run is identified by its params and split (fingerprint). It trains in phases, each one fit() call
with its own BackupAndRestore folder (see training_phases); the latest phase with a backup is where
it resumes.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tumorseg.atomic import atomic_dir, atomic_file, write_json
from tumorseg.config import Params, Train
from tumorseg.errors import ProjectError
from tumorseg.model.unet import without_training_outputs
from tumorseg.train.callbacks import finite_weights
from tumorseg.train.history import best_epoch_row, read_history, training_curves_figure


class TrainingError(ProjectError, RuntimeError):
    """Training could not produce a usable model."""


@dataclass(frozen=True)
class Phase:
    """One fit() call: epochs [first, end), the encoder trained or frozen, the rate scaled by lr_factor,
    on slices of `size` px (None: data.image_size)."""

    first: int
    end: int
    train_encoder: bool
    lr_factor: float
    backup: str  # BackupAndRestore folder, relative to the work folder
    size: int | None = None


def training_phases(train: Train) -> list[Phase]:
    """One phase; with train.freeze_encoder_epochs, decoder-only epochs and then fine-tuning at a lower rate;
    with train.progressive, epochs on smaller slices and then the rest at full size.

    Unfreezing takes effect only at a recompile, and a new size only in a new
    model, neither of which Keras 3 allows inside fit(), so each phase is its
    own fit() call starting at its first epoch, with its own backup folder: a
    run interrupted in the second phase resumes there, one interrupted earlier
    resumes the first.
    """
    epochs, frozen, small = train.epochs, train.freeze_encoder_epochs, train.progressive
    if small.epochs:
        return [Phase(0, small.epochs, True, 1.0, "backup/small", small.size),
                Phase(small.epochs, epochs, True, 1.0, "backup/full")]
    if frozen == 0:
        return [Phase(0, epochs, True, 1.0, "backup")]
    phases = [Phase(0, frozen, False, 1.0, "backup/frozen")]
    if frozen < epochs:
        phases.append(Phase(frozen, epochs, True, train.finetune_lr_factor, "backup/finetune"))
    return phases


def phases_to_run(phases: list[Phase], work_dir: str | Path) -> list[Phase]:
    """The phases left: from the latest one that has a backup (those before it are complete)."""
    started = [index for index, phase in enumerate(phases) if (Path(work_dir) / phase.backup).exists()]
    return phases[max(started, default=0):]


def fingerprint(params: Params, split_csv: str | Path) -> str:
    """Identifies a training run: params that shape it and the split it trains on."""
    relevant = params.model_dump(include={"seed", "data", "model", "train"})
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode())
    digest.update(Path(split_csv).read_bytes())
    return digest.hexdigest()


def data_digest(*arrays: np.ndarray) -> str:
    """Identifies the arrays a run trains on."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()


def backup_epoch(work_dir: str | Path) -> int:
    """The epoch that the run kept in `work_dir` resumes from (-1: none)."""
    paths = Path(work_dir).glob("backup/**/training_metadata.json")
    return max((int(json.loads(path.read_text())["epoch"]) for path in paths), default=-1)


@contextlib.contextmanager
def exclusive_work_dir(work_dir: str | Path) -> Iterator[None]:
    """Hold the work folder for this training (a lock file beside it, released when the process ends, however
    it ends); TrainingError when another training holds it: two `dvc exp run` at once in one workspace
    share params.yaml and this folder, so each would spoil the other's run."""
    work_dir = Path(work_dir)
    lock_path = work_dir.with_name(f"{work_dir.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(
                f"{lock_path}: another training is running in this workspace; DVC runs experiments started at "
                "once in one workspace with mixed params. Queue them instead: dvc exp run --queue ..., then "
                "dvc queue start -j 1 (each runs in its own copy)."
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            print(f"warning: {lock_path}: cannot lock the work folder on this file system ({error.strerror}); run "
                  "one training at a time in this workspace.", file=sys.stderr)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_work_dir(work_dir: str | Path, run_id: str) -> bool:
    """Keep the work folder of an interrupted run with the same id; start afresh otherwise."""
    work_dir = Path(work_dir)
    id_file = work_dir / "run_id"
    resuming = id_file.exists() and id_file.read_text() == run_id and (work_dir / "backup").exists()
    if not resuming:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        id_file.write_text(run_id)
    return resuming


def save_for_inference(checkpoint: str | Path, path: str | Path, image_size: int | None = None) -> None:
    """Save the checkpoint's model without its training configuration (loss, metrics, optimizer state)
    and without the deep-supervision outputs, which only training uses. A model trained on crops (any
    input size) is published for `image_size` slices, the size evaluate, predict and the exports check.

    The published model then loads with plain `keras.models.load_model`, in a
    notebook that never imports this package.
    """
    model = without_training_outputs(keras.models.load_model(checkpoint, compile=False))
    if model.input_shape[1] is None and image_size:
        fixed = keras.models.clone_model(model, input_tensors=keras.Input((image_size, image_size, 1), name="image"))
        fixed.set_weights(model.get_weights())
        model = fixed
    model.save(path)


def kept_checkpoint(checkpoint: Path) -> str:
    """What is left of a failed run's best checkpoint, for its message: a NaN or unreadable one is removed."""
    if checkpoint.exists():
        try:
            if finite_weights(keras.models.load_model(checkpoint, compile=False)):
                return f"the last good model stays in {checkpoint}"
        except Exception:  # noqa: BLE001  any unreadable checkpoint is no good model
            pass
        checkpoint.unlink()
    return "no epoch ended with a finite loss and finite weights, so no model was kept"


def finish(work_dir: Path, model_path: str | Path, metrics_path: str | Path, plots_dir: str | Path,
           first_epoch: int = 0, monitored: tuple[str, str] = ("val_loss", "min"),
           with_dvclive_plots: bool = True, image_size: int | None = None) -> dict[str, float]:
    """Check the run, then move its results into the DVC outputs (best `monitored` epoch from `first_epoch` on;
    the model for `image_size` slices where it was trained on crops)."""
    history = read_history(work_dir / "history.csv")
    bad = history[~np.isfinite(history[["loss", "val_loss"]]).all(axis=1)]
    if len(bad) or not (work_dir / "best.keras").exists():
        epoch = int(bad["epoch"].iloc[0]) + 1 if len(bad) else len(history)
        raise TrainingError(
            f"the loss became NaN or infinite at epoch {epoch}; models/ was not written and "
            f"{kept_checkpoint(work_dir / 'best.keras')}. Lower train.lr_max or use train.precision=float32, "
            f"then delete {work_dir} and run the stage again."
        )
    best = best_epoch_row(history, first_epoch, *monitored)
    metrics = {"best_epoch": int(best["epoch"]) + 1, "epochs": len(history)}
    metrics.update({key: round(float(best[key]), 5) for key in best.index if key != "epoch"})
    # The metrics go first and come back last: an interruption leaves no metrics beside a new model.
    Path(metrics_path).unlink(missing_ok=True)
    with atomic_file(model_path) as tmp:
        save_for_inference(work_dir / "best.keras", tmp, image_size)
    with atomic_dir(plots_dir) as tmp:
        if with_dvclive_plots:
            shutil.copytree(work_dir / "dvclive" / "plots", tmp, dirs_exist_ok=True)
        training_curves_figure(history).savefig(tmp / "curves.png")
    write_json(metrics_path, metrics)
    shutil.rmtree(work_dir)
    print(f"best epoch {metrics['best_epoch']}: val_loss {metrics['val_loss']}, val_dice {metrics.get('val_dice')}")
    return metrics
