"""Training on several machines: tf.distribute.MultiWorkerMirroredStrategy, cluster from TF_CONFIG.

Every machine runs the same train stage with its own TF_CONFIG; the chief (the
`chief` task, else worker 0) writes the stage's outputs, every other worker
writes to a scratch folder of its own that is removed when training ends (and
kept, with its BackupAndRestore state, when it is interrupted). Before
training, the workers check that they train the same run from the same epoch.

Keras 3 (tested with 3.15) cannot run model.fit under this strategy
(keras-team/keras issue 20585). Two of its steps fail, and `allow_fit` works
around both:
- before the first step, fit reduces one input batch across the replicas
  eagerly to build the model, and the collective reduce refuses the per-replica
  batch: with the model's private `_distribute_strategy` cleared, fit skips that
  build and the model, metrics and optimizer are built while the training step
  is traced, inside `strategy.scope()`;
- after each step, the per-replica loss and metrics (scalars) are averaged with
  `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars: the patched
  reduction averages them across replicas with axis=None.
Both touch private Keras code, imported only under this strategy;
tests/train/test_strategy.py fails when a Keras release changes it.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import tensorflow as tf

from tumorseg.errors import ProjectError

TASK_TYPES = ("chief", "worker")
FIX = ('set it on every machine, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
       '"task": {"type": "worker", "index": 0}}\' (docs/scale-out.md, Several GPUs, several machines)')


class ClusterError(ProjectError, ValueError):
    """TF_CONFIG, the workers or this Keras release do not allow multi-worker training; the message says why."""


@dataclass(frozen=True)
class Task:
    type: str
    index: int
    chief: bool

    def scratch_dir(self, work_dir: str | Path) -> Path:
        """Where a non-chief worker keeps its run and throwaway outputs (beside the chief's work folder)."""
        return Path(f"{work_dir}-{self.type}{self.index}")


def cluster_task(tf_config: str | None = None) -> Task:
    """This process's task in the cluster that TF_CONFIG describes, with a clear error when it is unusable."""
    text = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not text:
        raise ClusterError(f"train.strategy=multiworker reads the cluster from the TF_CONFIG environment variable: {FIX}")
    try:
        config = json.loads(text)
        cluster, task = dict(config["cluster"]), config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ClusterError(f"TF_CONFIG is not a valid cluster description ({error!r}): {FIX}") from error
    unsupported = sorted(set(cluster) - set(TASK_TYPES))
    if task_type not in TASK_TYPES or unsupported:
        raise ClusterError(
            f"TF_CONFIG: train.strategy=multiworker uses 'chief' and 'worker' tasks only, not "
            f"{unsupported or [task_type]}: list every machine under 'worker' (and at most one under 'chief')"
        )
    if not 0 <= index < len(cluster.get(task_type, [])):
        raise ClusterError(f"TF_CONFIG: task {task_type} {index} is not in the cluster {cluster}: {FIX}")
    chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return Task(task_type, index, chief)


def check_workers_agree(strategy: tf.distribute.Strategy, run_state: str, resume_epoch: int) -> None:
    """Fail on every worker, before training, unless all train the same run from the same epoch.

    `run_state` names what must match (params, split, data); `resume_epoch` is where this worker's
    backup resumes (-1: from the start).
    """
    digest = int(hashlib.sha256(run_state.encode()).hexdigest()[:12], 16)  # 48 bits: exact in float64
    mine = strategy.run(lambda: tf.constant([[digest, resume_epoch]], tf.float64))
    states = strategy.gather(mine, axis=0).numpy()
    if len(set(states[:, 0])) > 1:
        raise ClusterError(
            "the workers' params, split or data differ: check out the same commit and run `dvc pull` "
            "on every machine, then start all workers again"
        )
    if len(set(states[:, 1])) > 1:
        epochs = [int(epoch) for epoch in states[:, 1]]
        raise ClusterError(
            f"the workers would resume from different epochs ({epochs}; -1: from the start), as when one "
            f"lost its backup: delete checkpoints/train and checkpoints/train-worker* on every machine and "
            f"start all workers again"
        )


def allow_fit(model) -> None:
    """Let `model` (built under a MultiWorkerMirroredStrategy scope) train with fit() inside that scope."""
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        trainer = None
    if not (hasattr(model, "_distribute_strategy") and hasattr(trainer, "_collective_all_reduce_multi_worker")
            and hasattr(trainer, "reduce_per_replica")):
        raise ClusterError(
            "this Keras release changed the internals that train.strategy=multiworker works around "
            "(tumorseg/train/multiworker.py); it is tested with Keras 3.15: pip install 'keras==3.15.*'"
        )
    if not getattr(trainer.reduce_per_replica, "averages_scalars", False):
        trainer.reduce_per_replica = averaging_scalars(trainer.reduce_per_replica, trainer)
    model._distribute_strategy = None


def averaging_scalars(reduce_per_replica: Callable[..., object], trainer: ModuleType) -> Callable[..., object]:
    """Keras's reduction of step outputs, averaging scalars correctly across workers."""

    def reduce(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    reduce.averages_scalars = True
    return reduce
