"""What this machine's CPU can do fast, and whether a precision setting suits it.

Reduced precision pays only where the hardware computes in it. TensorFlow's
CPU kernels run bfloat16 through oneDNN on CPUs with AVX-512 (natively with
AVX512-BF16 or AMX); elsewhere they fall back to slow generic code (measured on
an AVX2-only CPU: a training step about 13x slower than float32, see README,
Running on a CPU). float16 has no fast CPU path at all.
"""

from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags as a set, or None where they cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def cpu_summary(flags):
    """A short description of the features that decide bfloat16 speed, for benchmark reports."""
    if flags is None:
        return "CPU flags unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    present = [flag for flag in wanted if flag in flags]
    return "CPU with " + (", ".join(present) if present else "none of " + ", ".join(wanted))


def precision_warning(precision, flags, has_gpu):
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
