"""Benchmark training and prediction speed (slices/s) of a U-Net configuration on this machine.

    python benchmarks/train.py [--filters 64] [--size 128] [--batch 32] [--precision float32] [--steps 10]
    python benchmarks/train.py --recipe cpu   # the configuration of params.yaml with recipes/cpu.yaml applied
    python benchmarks/train.py --recipe cpu16 --recipe my/recipe.yaml   # side by side, a recipe file of your own
    python benchmarks/train.py --recipe cpu16 --recipe cpu8-batch4 --slices 320   # the same slices at batches 16 and 4
    python benchmarks/train.py --quick        # a few steps of a tiny model, to check the script runs

A recipe with progressive resizing (train.progressive) is timed at both
sizes; its train figure is then the mean over its epochs (so many at the
small size, the rest at full size), which is what it saves per epoch.

Each configuration is params.yaml with the recipe or options applied, and
what is timed is what the train stage builds from it: the model (dropout,
encoder, type head included), its loss and metrics (tumorseg.model.build),
the input pipeline with the params' augmentation (tumorseg.train.batches:
tf.data under TensorFlow, numpy batches under KERAS_BACKEND=jax or torch),
on the project's phantom slices (tumorseg.data.synthetic);
prediction goes through a saved and reloaded .keras model, as users load it.
The first steps (graph tracing, XLA compilation) are not timed. On a GPU it
also prints the device and its peak memory (benchmarks/gpu.sh runs it there).
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tumorseg  # noqa: F401, I001  (first: it sets TensorFlow's CPU defaults before keras loads it)
import keras
import numpy as np

from tumorseg.config import load_params
from tumorseg.data.phantoms import phantom_arrays
from tumorseg.experiments.recipe import load_recipe
from tumorseg.model.build import build_model, compile_model, make_loss
from tumorseg.model.outputs import MASK_OUTPUT, TYPE_OUTPUT
from tumorseg.model.unet import one_hot_types
from tumorseg.train.batches import make_batches
from tumorseg.train.devices import accelerator, cpu_flags, cpu_summary

WARMUP_STEPS = 2


def time_training(model, params, images, masks, labels, steps, premade=False):
    """Training slices/s through the train stage's input pipeline (its augmentation, its targets), or on one
    pre-made batch held in memory, and the number of cores kept busy on average (CPU time of all of this
    process's threads over wall time)."""
    batch = params.train.batch_size
    labels = labels if params.model.classify else None
    if premade:
        mask_target = masks[:batch, ..., None].astype(np.float32)
        target = mask_target if labels is None else {MASK_OUTPUT: mask_target,
                                                     TYPE_OUTPUT: one_hot_types(labels[:batch])}
        data = RepeatedBatch(images[:batch, ..., None], target)
    else:
        data = make_batches(images, masks, batch, training=True, augment=params.train.augment, seed=params.seed,
                            labels=labels)
        data = data.repeat() if hasattr(data, "repeat") else data  # tf.data repeats; a PyDataset restarts
    model.fit(data, steps_per_epoch=WARMUP_STEPS, epochs=1, shuffle=False, verbose=0)
    start, start_cpu = time.perf_counter(), time.process_time()
    model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    return steps * batch / seconds, (time.process_time() - start_cpu) / seconds


class RepeatedBatch(keras.utils.PyDataset):
    """One batch, already a tensor of the backend (on the GPU where there is one), served again and again."""

    def __init__(self, images, targets, length=1_000_000):
        super().__init__()
        self.batch = (keras.ops.convert_to_tensor(images), keras.tree.map_structure(keras.ops.convert_to_tensor, targets))
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.batch


def backend_version():
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    version = f"{backend} {__import__(module).__version__}" if module else backend
    if backend == "tensorflow":
        version += f" (oneDNN {'on' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1' else 'off'})"
    return version


def time_prediction(model_path, images, batch, steps):
    model = keras.models.load_model(model_path, compile=False)
    x = images[: batch * (steps + WARMUP_STEPS), ..., None]
    model.predict(x[: batch * WARMUP_STEPS], batch_size=batch, verbose=0)
    start = time.perf_counter()
    model.predict(x[batch * WARMUP_STEPS :], batch_size=batch, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def recipe_config(name, steps):
    """(label, params, steps): params.yaml with recipes/NAME.yaml (or a recipe file NAME.yaml elsewhere) applied."""
    return f"recipe {Path(name).stem}", load_params().replaced(load_recipe(name)), steps


def epoch_mean(small, full, small_epochs, epochs):
    """Slices/s over a run of `epochs` epochs, the first `small_epochs` of them at the `small` speed."""
    return epochs / (small_epochs / small + (epochs - small_epochs) / full)


def compiled_model(params, size):
    """The model the train stage builds from params, for `size` x `size` slices, compiled with its loss and
    metrics (tumorseg.model.build)."""
    return compile_model(build_model(params, size), params, make_loss(params.train.loss), params.train.lr_max)


def measure(label, params, steps, compare_feed=False):
    """Train and predict slices/s (and cores busy) of one configuration."""
    keras.mixed_precision.set_global_policy(params.train.precision)
    keras.utils.set_random_seed(0)
    batch, size = params.train.batch_size, params.data.image_size
    images, masks, labels = phantom_arrays(batch * (steps + WARMUP_STEPS), size)
    model = compiled_model(params, size)
    result = dict(label=label, params=params, steps=steps, parameters=model.count_params())
    result["train"], result["busy"] = time_training(model, params, images, masks, labels, steps)
    if compare_feed:
        result["premade"] = time_training(model, params, images, masks, labels, steps, premade=True)[0]
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.keras")
        result["predict"] = time_prediction(Path(tmp) / "model.keras", images, batch, steps)
    progressive = params.train.progressive
    if progressive.epochs:
        small = compiled_model(params, progressive.size)
        small_images, small_masks, _ = phantom_arrays(batch * (steps + WARMUP_STEPS), progressive.size)
        result["train_small"] = time_training(small, params, small_images, small_masks, labels, steps)[0]
        result["train_full"] = result["train"]
        result["train"] = epoch_mean(result["train_small"], result["train_full"], progressive.epochs,
                                     params.train.epochs)
    keras.mixed_precision.set_global_policy("float32")
    return result


def report(result):
    params = result["params"]
    model, size = params.model, params.data.image_size
    label = f"{result['label']}: " if result["label"] else ""
    variants = [text for on, text in ((model.separable, "separable convolutions below the top level"),
                                      (model.classify, "the type head"), (model.encoder != "none",
                                      f"{model.encoder} encoder")) if on]
    print(f"config: {label}{size}x{size}, depth {model.depth}, {model.filters} base filters "
          f"({result['parameters']:,} parameters){''.join(', ' + text for text in variants)}, dropout "
          f"{model.dropout:g}, batch {params.train.batch_size}, {params.train.precision}")
    print(f"train: {result['train']:.2f} slices/s ({result['steps']} steps, input pipeline with augmentation; "
          f"{result['busy']:.1f} of {os.cpu_count()} cores busy on average)")
    progressive = params.train.progressive
    if progressive.epochs:
        print(f"  progressive resizing: {result['train_small']:.2f} slices/s at {progressive.size}x{progressive.size} "
              f"for {progressive.epochs} epochs, {result['train_full']:.2f} at {size}x{size} for "
              f"{params.train.epochs - progressive.epochs}: {result['train']:.2f} slices/s over the run's "
              f"{params.train.epochs} epochs")
    if "premade" in result:
        print(f"train on a pre-made batch: {result['premade']:.2f} slices/s (input pipeline at "
              f"{100 * result['train'] / result['premade']:.0f}% of that speed)")
    print(f"predict: {result['predict']:.2f} slices/s (saved .keras model)")


def options(filters, depth, size, batch, precision):
    """params.yaml with the command line's model size, input size, batch and precision."""
    return load_params().replaced({"model.filters": filters, "model.depth": depth, "data.image_size": size,
                                   "train.batch_size": batch, "train.precision": precision})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compare-feed", action="store_true",
                        help="also time training on a pre-made in-memory batch (no input pipeline)")
    parser.add_argument("--recipe", metavar="NAME", action="append",
                        help="the model, size, batch and precision of params.yaml with recipes/NAME.yaml (or a "
                             "file NAME.yaml) applied; repeat it to time recipes side by side (speed relative to the first)")
    parser.add_argument("--slices", type=int,
                        help="time this many training slices per configuration instead of --steps (steps = slices / "
                             "batch): the same work for configurations of different batch sizes")
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps")
    args = parser.parse_args()
    if args.quick:
        configs = [("", options(4, 2, 32, 4, args.precision), 2)]
    elif args.recipe:
        configs = [recipe_config(name, args.steps) for name in args.recipe]
    else:
        configs = [("", options(args.filters, args.depth, args.size, args.batch, args.precision), args.steps)]
    if args.slices:
        configs = [(label, params, max(1, args.slices // params.train.batch_size)) for label, params, _ in configs]
    results = [measure(*config, compare_feed=args.compare_feed) for config in configs]

    print(f"command: python benchmarks/train.py {' '.join(sys.argv[1:])}".strip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_summary(cpu_flags())}, "
          f"Python {platform.python_version()}, Keras {keras.__version__} on {backend_version()}")
    gpu = accelerator()
    if gpu:
        print(f"accelerator: {gpu[0]}, peak memory {gpu[1]:.0f} MiB")
    for result in results:
        report(result)
    for result in results[1:]:
        base = results[0]
        print(f"{result['label']} against {base['label']}: train {result['train'] / base['train']:.2f}x, "
              f"predict {result['predict'] / base['predict']:.2f}x the slices/s")


if __name__ == "__main__":
    main()
