"""The benchmark scripts run in a quick mode and print their figures (they are not timed here)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_convert_benchmark_quick():
    output = run_script("benchmarks/convert.py", "--slices", "24", "--size", "32")
    assert "24 slices" in output and "slices/s" in output and "peak RSS" in output


def test_train_benchmark_quick():
    output = run_script("benchmarks/train.py", "--quick", "--compare-feed")
    expected = ("command:", "machine:", "train:", "cores busy on average", "train on a pre-made batch:", "predict:")
    for line in expected:
        assert line in output


def test_train_benchmark_times_recipes_side_by_side():
    output = run_script("benchmarks/train.py", "--recipe", "cpu", "--recipe", "cpu16", "--steps", "1")
    assert "command: python benchmarks/train.py --recipe cpu --recipe cpu16" in output
    assert "config: recipe cpu: 96x96" in output and "config: recipe cpu16: 128x128" in output
    assert "recipe cpu16 against recipe cpu: train" in output


def test_profile_benchmark_quick():
    output = run_script("benchmarks/profile_step.py", "--quick")
    for line in ("train step:", "Conv2D", "BatchNormalization", "validation pass", "input pipeline"):
        assert line in output
