"""The benchmark scripts run in a quick mode and print their figures (they are not timed here)."""

import runpy
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_convert_benchmark_quick():
    output = run_script("benchmarks/convert.py", "--slices", "24", "--size", "32")
    assert "24 slices" in output and "slices/s" in output and "peak RSS" in output


def test_serve_benchmark_quick():
    output = run_script("benchmarks/serve.py", "--quick")
    assert "command:" in output and "machine:" in output and "onnxruntime" in output
    assert "max |probability difference|" in output and "masks agree on" in output


def test_train_benchmark_quick():
    output = run_script("benchmarks/train.py", "--quick", "--compare-feed")
    expected = ("command:", "machine:", "train:", "cores busy on average", "train on a pre-made batch:", "predict:")
    for line in expected:
        assert line in output


def test_train_benchmark_times_recipes_side_by_side(tmp_path):
    tiny = {"data.image_size": 32, "model.depth": 2, "model.filters": 2, "train.batch_size": 4}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "tiny-progressive.yaml").write_text(yaml.safe_dump(
        {**tiny, "model.separable": True, "train.batch_size": 2, "train.epochs": 5, "train.progressive.size": 16,
         "train.progressive.epochs": 3}))
    output = run_script("benchmarks/train.py", "--recipe", str(tmp_path / "tiny.yaml"),
                        "--recipe", str(tmp_path / "tiny-progressive.yaml"), "--slices", "8")
    assert "config: recipe tiny: 32x32, depth 2, 2 base filters" in output
    assert "config: recipe tiny-progressive: 32x32" in output and "separable convolutions below the top" in output
    assert "(2 steps, input pipeline" in output and "(4 steps, input pipeline" in output  # 8 slices at batch 4 and 2
    assert "progressive resizing:" in output and "at 16x16 for 3 epochs" in output and "at 32x32 for 2" in output
    assert "recipe tiny-progressive against recipe tiny: train" in output


def test_progressive_recipes_are_timed_by_their_mean_epoch():
    benchmark = runpy.run_path(str(REPO / "benchmarks" / "train.py"))  # not run as __main__: defines only
    # 20 epochs at 40 slices/s and 5 at 10: 20 * N/40 + 5 * N/10 = N seconds for 25 epochs of N slices
    assert benchmark["epoch_mean"](40.0, 10.0, 20, 25) == 25.0
    assert benchmark["epoch_mean"](10.0, 10.0, 20, 25) == 10.0


def test_profile_benchmark_quick():
    output = run_script("benchmarks/profile_step.py", "--quick")
    for line in ("train step:", "Conv2D", "BatchNormalization", "validation pass", "input pipeline"):
        assert line in output
