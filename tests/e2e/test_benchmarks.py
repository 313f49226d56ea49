"""The benchmark scripts run in a quick mode and print their figures (they are not timed here): each figure
is read back from its line and must be a number in its range."""

import re
import runpy
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def figures(pattern, output):
    """The numbers captured by `pattern` in the benchmark's output, as floats; fails when it is missing."""
    found = re.search(pattern, output)
    assert found, f"no line matching {pattern!r} in:\n{output}"
    return [float(value) for value in found.groups()]


def run_script(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_convert_benchmark_quick():
    output = run_script("benchmarks/convert.py", "--slices", "24", "--size", "32")
    assert "input: 24 slices" in output
    seconds, speed = figures(r"wall: ([\d.]+) s \((\d+) slices/s\)", output)
    assert seconds > 0 and speed > 0
    main, worker = figures(r"peak RSS: main process (\d+) MB, largest worker (\d+) MB", output)
    assert main > 0 and worker >= 0


def test_serve_benchmark_quick():
    output = run_script("benchmarks/serve.py", "--quick")
    assert "command:" in output and "machine:" in output
    keras_speed, onnx_speed, ratio, difference, agree = figures(
        r"predict: Keras/TensorFlow ([\d.]+) slices/s, onnxruntime ([\d.]+) slices/s \(([\d.]+)x\); "
        r"max \|probability difference\| ([\d.e+-]+), masks agree on ([\d.]+)% of pixels", output)
    assert keras_speed > 0 and onnx_speed > 0 and abs(ratio - onnx_speed / keras_speed) <= 0.01 + 0.01 * ratio
    assert difference < 1e-3 and agree >= 99.9  # the same network on two runtimes


def test_train_benchmark_quick():
    output = run_script("benchmarks/train.py", "--quick", "--compare-feed")
    assert "command:" in output and "machine:" in output
    train, steps, busy, cores = figures(r"train: ([\d.]+) slices/s \((\d+) steps, input pipeline with "
                                        r"augmentation; ([\d.]+) of (\d+) cores busy on average\)", output)
    assert train > 0 and steps >= 1 and 0 <= busy <= cores
    premade, share = figures(r"train on a pre-made batch: ([\d.]+) slices/s \(input pipeline at (\d+)% ", output)
    assert premade > 0 and abs(share - 100 * train / premade) <= 1
    assert figures(r"predict: ([\d.]+) slices/s \(saved \.keras model\)", output)[0] > 0


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
    milliseconds, speed = figures(r"train step: (\d+) ms \(([\d.]+) slices/s on a batch in memory\)", output)
    assert milliseconds > 0 and speed > 0
    shares = {kind: float(total) for kind, total in
              re.findall(r"^  (\S.*?)\s+[\d.]+%\s+[\d.]+%\s+([\d.]+)%$", output, flags=re.MULTILINE)}
    assert {"Conv2D", "BatchNormalization"} <= set(shares), output
    assert 95 <= sum(shares.values()) <= 100.5  # the layer kinds share the busy time
    for part in ("train steps", "validation pass", "input pipeline"):
        assert figures(rf"  {part}\s+([\d.]+) s", output)[0] >= 0
