"""Training on several machines: tf.distribute.MultiWorkerMirroredStrategy, cluster from TF_CONFIG.

Every machine runs the same train stage with its own TF_CONFIG; the chief (the
`chief` task, else worker 0) writes the stage's outputs, every other worker
writes to a scratch folder of its own that is removed when training ends (and
kept, with its BackupAndRestore state, when it is interrupted).

Keras 3 (3.15 at the time of writing) cannot run model.fit under this strategy
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
Both touch private Keras code and are applied only under this strategy;
tests/test_strategy.py fails loudly when a Keras release changes it.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as keras_tf_trainer

TASK_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class Task:
    type: str
    index: int
    chief: bool

    def scratch_dir(self, work_dir):
        """Where a non-chief worker keeps its run and throwaway outputs (beside the chief's work folder)."""
        return Path(f"{work_dir}-{self.type}{self.index}")


def cluster_task(tf_config=None):
    """This process's task in the cluster that TF_CONFIG describes, with a clear error when it is unusable."""
    text = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    fix = ('set it on every machine, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
           '"task": {"type": "worker", "index": 0}}\' (README, Several GPUs, several machines)')
    if not text:
        raise ValueError(f"train.strategy=multiworker reads the cluster from the TF_CONFIG environment variable: {fix}")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG is not a valid cluster description ({error!r}): {fix}") from error
    unsupported = sorted(set(cluster) - set(TASK_TYPES))
    if task_type not in TASK_TYPES or unsupported:
        raise ValueError(
            f"TF_CONFIG: train.strategy=multiworker uses 'chief' and 'worker' tasks only, not "
            f"{unsupported or [task_type]}"
        )
    if not 0 <= index < len(cluster.get(task_type, [])):
        raise ValueError(f"TF_CONFIG: task {task_type} {index} is not in the cluster {cluster}")
    chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return Task(task_type, index, chief)


def reduce_per_replica(values, strategy, reduction):
    """Keras's reduction of step outputs, averaging scalars correctly across workers."""
    if reduction in ("auto", "mean") and keras_tf_trainer._collective_all_reduce_multi_worker(strategy):
        return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
    return original_reduce_per_replica(values, strategy, reduction)


original_reduce_per_replica = keras_tf_trainer.reduce_per_replica


def allow_fit(model):
    """Let `model` (built under a MultiWorkerMirroredStrategy scope) train with fit() inside that scope."""
    if not hasattr(model, "_distribute_strategy") or not hasattr(keras_tf_trainer, "_collective_all_reduce_multi_worker"):
        raise RuntimeError(
            "this Keras release changed the internals that train.strategy=multiworker works around "
            "(tumorseg/multiworker.py); use a Keras version listed in requirements.txt"
        )
    keras_tf_trainer.reduce_per_replica = reduce_per_replica
    model._distribute_strategy = None
