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


def test_train_benchmark_takes_a_recipe():
    output = run_script("benchmarks/train.py", "--recipe", "cpu", "--steps", "1")
    assert "command: python benchmarks/train.py --recipe cpu" in output
    assert "16 base filters" in output and "train:" in output
