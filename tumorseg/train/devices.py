"""Where training runs: the distribution strategy (one device, every GPU, or several machines; the
multi-worker details are in tumorseg.train.multiworker), whether there is a GPU, deterministic seeding,
and what this machine's CPU can do fast.

Reduced precision pays only where the hardware computes in it. TensorFlow's
CPU kernels run bfloat16 through oneDNN on CPUs with AVX-512 (natively with
AVX512-BF16 or AMX); elsewhere they fall back to slow generic code (measured on
an AVX2-only CPU: a training step about 13x slower than float32, see
docs/cpu.md). float16 has no fast CPU path at all.
"""

import contextlib
from pathlib import Path

import keras

from tumorseg.config import ConfigError


class OneDevice:
    """The strategy of a backend without tf.distribute (JAX, PyTorch): one device, one replica."""

    num_replicas_in_sync = 1

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def check_backend(strategy: str) -> None:
    """Raise ConfigError when train.strategy needs TensorFlow and the Keras backend is another."""
    if strategy != "default" and keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"train.strategy={strategy} needs the TensorFlow backend; under KERAS_BACKEND="
            f"{keras.backend.backend()} use train.strategy=default (one device)."
        )


def get_strategy(name: str):
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


def accelerator() -> tuple[str, float] | None:
    """(name, peak memory in MiB) of the GPU the backend computes on, or None without one."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        return device.device_kind, (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        return name, tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_name(0), torch.cuda.max_memory_allocated() / 2**20
    return None


def has_accelerator() -> bool:
    """Whether the Keras backend in use computes on a GPU."""
    return accelerator() is not None


def make_deterministic(seed: int) -> None:
    """Seed Python, numpy and the backend; on TensorFlow also deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags as a set, or None where they cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def cpu_summary(flags: set[str] | None) -> str:
    """A short description of the features that decide bfloat16 speed, for benchmark reports."""
    if flags is None:
        return "CPU flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    present = [flag for flag in wanted if flag in flags]
    return "CPU with " + (", ".join(present) if present else "none of " + ", ".join(wanted))


def precision_warning(precision: str, flags: set[str] | None, has_gpu: bool) -> str | None:
    """A warning when `precision` will run slower than float32 on this machine, else None."""
    if has_gpu or precision == "float32" or flags is None:
        return None
    if precision == "mixed_float16":
        return (
            "train.precision=mixed_float16 is meant for GPUs: this machine has none and CPUs have no fast "
            "float16 kernels, so training will be slower than float32. Use -S train.precision=float32."
        )
    if not any(flag in flags for flag in BF16_FLAGS):
        return (
            "train.precision=mixed_bfloat16 on a CPU without AVX512-BF16 or AMX: TensorFlow falls back to "
            "slow generic bfloat16 kernels (a training step measured about 13x slower than float32 on an "
            "AVX2-only CPU). Use -S train.precision=float32 on this machine."
        )
    return None
