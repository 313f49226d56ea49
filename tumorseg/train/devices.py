"""Where training runs: the distribution strategy (one device, every GPU, or several machines; the
multi-worker details are in tumorseg.multiworker), whether there is a GPU, and deterministic seeding."""

import contextlib

import keras

from tumorseg.config import ConfigError


class OneDevice:
    """The strategy of a backend without tf.distribute (JAX, PyTorch): one device, one replica."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def check_backend(strategy):
    """Raise ConfigError when train.strategy needs TensorFlow and the Keras backend is another."""
    if strategy != "default" and keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"train.strategy={strategy} needs the TensorFlow backend; under KERAS_BACKEND="
            f"{keras.backend.backend()} use train.strategy=default (one device)."
        )


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
