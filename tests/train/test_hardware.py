"""CPU feature detection and the warning for a precision the machine cannot run fast."""

import pytest

from tumorseg.train.devices import cpu_flags, cpu_summary, precision_warning

AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}


def test_cpu_flags_is_none_when_unreadable(tmp_path):
    assert cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "noflags") is None


def test_cpu_summary_names_the_features_that_decide_bfloat16_speed():
    assert cpu_summary(AVX512_BF16) == "CPU with avx2, avx512f, avx512_bf16"
    assert cpu_summary({"sse2"}) == "CPU with none of avx2, avx512f, avx512_bf16, amx_bf16"
    assert cpu_summary(None) == "CPU flags unknown"


@pytest.mark.parametrize(
    ("precision", "flags", "has_gpu", "expected"),
    [
        ("mixed_bfloat16", AVX2_ONLY, False, "AVX512-BF16"),
        ("mixed_float16", AVX512_BF16, False, "meant for GPUs"),
        ("mixed_bfloat16", AVX512_BF16, False, None),
        ("mixed_bfloat16", AVX2_ONLY | {"amx_bf16"}, False, None),
        ("mixed_bfloat16", AVX2_ONLY, True, None),
        ("mixed_float16", AVX2_ONLY, True, None),
        ("float32", AVX2_ONLY, False, None),
        ("mixed_bfloat16", None, False, None),
    ],
)
def test_precision_warning(precision, flags, has_gpu, expected):
    warning = precision_warning(precision, flags, has_gpu)
    if expected is None:
        assert warning is None
    else:
        assert expected in warning and "train.precision=float32" in warning


def _onednn_setting_seen_by_tensorflow(env_value):
    """TF_ENABLE_ONEDNN_OPTS as a stage process sees it when TensorFlow loads (through keras)."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    code = "import os, tumorseg, keras; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_onednn_kernels_are_on_by_default_and_a_users_choice_wins():
    assert _onednn_setting_seen_by_tensorflow(None) == "1"
    assert _onednn_setting_seen_by_tensorflow("0") == "0"
