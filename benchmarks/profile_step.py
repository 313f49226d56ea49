"""Where one training epoch's time goes on this machine (TensorFlow backend): a profile of the train step
by layer kind, forward and backward, next to the input pipeline and the validation pass.

    python benchmarks/profile_step.py --recipe cpu       # params.yaml with recipes/cpu.yaml applied
    python benchmarks/profile_step.py --recipe cpu16
    python benchmarks/profile_step.py --quick            # a tiny model, to check the script runs

The train step is profiled with TensorFlow's profiler on one batch held in memory (self-time of every
op, grouped by the Keras layer it belongs to); the input pipeline (tumorseg.train.batches.make_batches with
the recipe's augmentation) and the validation pass (model.evaluate) are timed on their own, and the
epoch is estimated for --train-slices and --val-slices (default: the dev set's fixed split).
"""

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import tumorseg  # noqa: F401, I001  (first: it sets TensorFlow's CPU defaults before keras loads it)
import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

from tumorseg.config import load_params
from tumorseg.data.phantoms import phantom_arrays
from tumorseg.experiments.recipe import load_recipe
from tumorseg.model.build import build_model, compile_model, make_loss
from tumorseg.train.batches import make_batches
from tumorseg.train.devices import cpu_flags, cpu_summary

WARMUP_STEPS = 3
OPTIMIZER_OPS = ("ResourceApplyAdam", "AssignVariableOp", "AssignAddVariableOp", "ReadVariableOp")


def op_self_times(xplane_path):
    """(operation name, op type, self-time in microseconds) of every op in a profile."""
    data = _pywrap_profiler_plugin.xspace_to_tools_data([str(xplane_path)], "framework_op_stats", {})
    table = json.loads(data[0] if isinstance(data, tuple) else data)[0]
    columns = [column["id"] for column in table["cols"]]
    name, kind, self_time = (columns.index(key) for key in ("operation", "type", "total_self_time"))
    rows = ([cell.get("v") if cell else None for cell in row["c"]] for row in table["rows"])
    return [(row[name], row[kind], row[self_time]) for row in rows]


def layer_kinds(model, prefix=""):
    """{layer name: its class}, the layers of a nested model (a pretrained encoder) included, as
    "encoder: DepthwiseConv2D" and so on."""
    kinds = {}
    for layer in model.layers:
        kinds[layer.name] = f"{prefix}{type(layer).__name__}"
        if isinstance(layer, keras.Model):
            kinds.update(layer_kinds(layer, f"{prefix}{layer.name}: "))
    return kinds


def layer_kind(operation, kinds):
    """The class of the innermost Keras layer an op belongs to (its name is a segment of the op's name)."""
    for segment in reversed(operation.split("/")):
        for candidate in (segment, segment.rsplit("_", 1)[0]):
            if candidate in kinds:
                return kinds[candidate]
    return "loss, metrics and other"


def phase(operation, op_type):
    if op_type in OPTIMIZER_OPS or "adam" in operation.lower():
        return "optimizer"
    return "backward" if operation.startswith("gradient_tape") else "forward"


def profile_train_step(model, images, masks, steps):
    """Seconds per step and {(layer kind, phase): share of busy time} for `steps` train steps."""
    for _ in range(WARMUP_STEPS):
        model.train_on_batch(images, masks)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, masks)
        seconds = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        ops = op_self_times(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0])
    kinds = layer_kinds(model)
    shares = defaultdict(float)
    for operation, op_type, self_time in ops:
        if op_type == "IDLE":
            continue
        step_phase = phase(operation, op_type)
        kind = "Adam update" if step_phase == "optimizer" else layer_kind(operation, kinds)
        shares[kind, step_phase] += self_time
    busy = sum(shares.values())
    return seconds, {key: value / busy for key, value in shares.items()}


def time_pipeline(images, masks, batch, augment, slices):
    """Seconds for the input pipeline alone to deliver `slices` augmented training slices."""
    data = make_batches(images, masks, batch, training=True, augment=augment, seed=0)
    data = data.repeat() if hasattr(data, "repeat") else data
    steps = -(-slices // batch)
    iterator = iter(data)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return time.perf_counter() - start


def time_validation(model, images, masks, batch, slices):
    """Seconds for one validation pass (model.evaluate) over `slices` slices."""
    x = np.resize(images, (slices, *images.shape[1:]))[..., None]
    y = np.resize(masks, (slices, *masks.shape[1:]))[..., None].astype("float32")
    model.evaluate(x[:batch], y[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.evaluate(x, y, batch_size=batch, verbose=0)
    return time.perf_counter() - start


def print_profile(shares):
    print("train step, share of busy CPU time by layer kind (self-time of its ops):")
    print(f"  {'layer kind':<26}{'forward':>9}{'backward':>10}{'total':>8}")
    by_kind = defaultdict(dict)
    for (kind, step_phase), share in shares.items():
        by_kind[kind][step_phase] = share
    for kind, phases in sorted(by_kind.items(), key=lambda item: -sum(item[1].values())):
        forward, backward = phases.get("forward", 0.0), phases.get("backward", 0.0)
        total = sum(phases.values())
        print(f"  {kind:<26}{100 * forward:>8.1f}%{100 * backward:>9.1f}%{100 * total:>7.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", metavar="NAME", help="params.yaml with recipes/NAME.yaml applied")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--train-slices", type=int, default=938)
    parser.add_argument("--val-slices", type=int, default=293)
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps")
    args = parser.parse_args()
    params = load_params().replaced(load_recipe(args.recipe)) if args.recipe else load_params()
    params = params.replaced({"model.classify": False})  # the mask's train step: one target, as profiled below
    if args.quick:
        params = params.replaced({"data.image_size": 32, "model.depth": 2, "model.filters": 4, "train.batch_size": 4})
        args.steps, args.train_slices, args.val_slices = 2, 8, 8
    size, depth, filters = params.data.image_size, params.model.depth, params.model.filters
    batch, augment = params.train.batch_size, params.train.augment

    keras.utils.set_random_seed(0)
    images, masks, _ = phantom_arrays(max(batch, 64), size)
    model = compile_model(build_model(params), params, make_loss(params.train.loss), params.train.lr_max)
    step_seconds, shares = profile_train_step(model, images[:batch, ..., None],
                                              masks[:batch, ..., None].astype("float32"), args.steps)
    pipeline = time_pipeline(images, masks, batch, augment, args.train_slices)
    validation = time_validation(model, images, masks, batch, args.val_slices)
    train = step_seconds * -(-args.train_slices // batch)

    print(f"command: python benchmarks/profile_step.py {' '.join(sys.argv[1:])}".strip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_summary(cpu_flags())}, "
          f"TensorFlow {tf.__version__} (oneDNN {'on' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1' else 'off'}), "
          f"Keras {keras.__version__}")
    print(f"config: {size}x{size}, depth {depth}, {filters} base filters, batch {batch}, "
          f"{model.count_params():,} parameters")
    print(f"train step: {1000 * step_seconds:.0f} ms ({batch / step_seconds:.1f} slices/s on a batch in memory)")
    print_profile(shares)
    epoch = train + validation
    print(f"one epoch of {args.train_slices} training and {args.val_slices} validation slices, estimated:")
    print(f"  train steps      {train:7.1f} s ({100 * train / epoch:.0f}%)")
    print(f"  validation pass  {validation:7.1f} s ({100 * validation / epoch:.0f}%)")
    print(f"  input pipeline   {pipeline:7.1f} s alone (runs beside the train steps; "
          f"{'hidden' if pipeline < train else 'NOT hidden'} when it overlaps them)")


if __name__ == "__main__":
    main()
