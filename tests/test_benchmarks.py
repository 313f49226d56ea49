"""The benchmark scripts run in a quick mode and print their figures (they are not timed here)."""

import runpy
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
    output = run_script("benchmarks/train.py", "--recipe", "cpu", "--recipe", "cpu16-progressive", "--steps", "1")
    assert "command: python benchmarks/train.py --recipe cpu --recipe cpu16-progressive" in output
    assert "config: recipe cpu: 96x96" in output and "config: recipe cpu16-progressive: 128x128" in output
    assert "progressive resizing:" in output and "at 64x64 for 20 epochs" in output and "at 128x128 for 5" in output
    assert "recipe cpu16-progressive against recipe cpu: train" in output


def test_progressive_recipes_are_timed_by_their_mean_epoch():
    benchmark = runpy.run_path(str(REPO / "benchmarks" / "train.py"))  # not run as __main__: defines only
    # 20 epochs at 40 slices/s and 5 at 10: 20 * N/40 + 5 * N/10 = N seconds for 25 epochs of N slices
    assert benchmark["epoch_mean"](40.0, 10.0, 20, 25) == 25.0
    assert benchmark["epoch_mean"](10.0, 10.0, 20, 25) == 10.0


def test_profile_benchmark_quick():
    output = run_script("benchmarks/profile_step.py", "--quick")
    for line in ("train step:", "Conv2D", "BatchNormalization", "validation pass", "input pipeline"):
        assert line in output
