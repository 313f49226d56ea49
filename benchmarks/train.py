"""Benchmark training and prediction speed (slices/s) of a U-Net configuration on this machine.

    python benchmarks/train.py [--filters 64] [--size 128] [--batch 32] [--precision float32] [--steps 10]
    python benchmarks/train.py --recipe cpu   # the configuration of params.yaml with recipes/cpu.yaml applied
    python benchmarks/train.py --recipe cpu16 --recipe my/recipe.yaml   # side by side, a recipe file of your own
    python benchmarks/train.py --recipe cpu16 --recipe cpu8-batch4 --slices 320   # the same slices at batches 16 and 4
    python benchmarks/train.py --quick        # a few steps of a tiny model, to check the script runs

A recipe with progressive resizing (train.progressive) is timed at both
sizes; its train figure is then the mean over its epochs (so many at the
small size, the rest at full size), which is what it saves per epoch.

Training goes through the project's input pipeline with augmentation
(tumorseg.batches.make_batches: tf.data under TensorFlow, numpy batches under
KERAS_BACKEND=jax or torch), the loss and metrics of the train stage;
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tumorseg  # noqa: E402,F401  (sets TensorFlow's CPU defaults before keras loads it)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tumorseg.batches import make_batches  # noqa: E402
from tumorseg.hardware import cpu_flags, cpu_summary  # noqa: E402
from tumorseg.losses import BceDiceLoss, training_metrics  # noqa: E402
from tumorseg.model import build_unet  # noqa: E402
from tumorseg.config import Augment, load_params  # noqa: E402
from tumorseg.recipe import load_recipe  # noqa: E402

WARMUP_STEPS = 2


def phantom_batch(count, size, seed=0):
    """Images with one bright disk each, and their masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images = rng.random((count, size, size), dtype=np.float32) * 0.3
    masks = np.zeros((count, size, size), np.uint8)
    for i in range(count):
        r, c, radius = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size // 10]
        masks[i] = (rows - r) ** 2 + (cols - c) ** 2 < radius**2
        images[i][masks[i] > 0] += 0.5
    return images, masks


def time_training(model, images, masks, batch, steps, premade=False):
    """Training slices/s through the input pipeline, or on one pre-made batch held in memory, and the
    number of cores kept busy on average (CPU time of all of this process's threads over wall time)."""
    if premade:
        data = RepeatedBatch(images[:batch, ..., None], masks[:batch, ..., None].astype(np.float32))
    else:
        data = make_batches(images, masks, batch, training=True, augment=Augment(hflip=True), seed=0)
        data = data.repeat() if hasattr(data, "repeat") else data  # tf.data repeats; a PyDataset restarts
    model.fit(data, steps_per_epoch=WARMUP_STEPS, epochs=1, shuffle=False, verbose=0)
    start, start_cpu = time.perf_counter(), time.process_time()
    model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    return steps * batch / seconds, (time.process_time() - start_cpu) / seconds


class RepeatedBatch(keras.utils.PyDataset):
    """One batch, already a tensor of the backend (on the GPU where there is one), served again and again."""

    def __init__(self, images, masks, length=1_000_000):
        super().__init__()
        self.batch = (keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(masks))
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.batch


def accelerator():
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
    """The benchmark settings of params.yaml with recipes/NAME.yaml (or a recipe file NAME.yaml elsewhere) applied."""
    params = load_params().replaced(load_recipe(name))
    progressive = params.train.progressive
    return dict(label=f"recipe {Path(name).stem}", filters=params.model.filters, depth=params.model.depth,
                separable=params.model.separable, size=params.data.image_size, batch=params.train.batch_size,
                precision=params.train.precision, steps=steps,
                progressive=(progressive.size, progressive.epochs, params.train.epochs) if progressive.epochs else None)


def epoch_mean(small, full, small_epochs, epochs):
    """Slices/s over a run of `epochs` epochs, the first `small_epochs` of them at the `small` speed."""
    return epochs / (small_epochs / small + (epochs - small_epochs) / full)


def compiled_unet(size, config):
    """The configuration's U-Net for `size` x `size` slices, compiled with the train stage's loss and metrics."""
    model = build_unet(size, config["depth"], config["filters"], separable=config.get("separable", False))
    model.compile(optimizer=keras.optimizers.Adam(1.0e-3), loss=BceDiceLoss(), metrics=training_metrics())
    return model


def measure(config, compare_feed=False):
    """Train and predict slices/s (and cores busy) of one configuration."""
    keras.mixed_precision.set_global_policy(config["precision"])
    keras.utils.set_random_seed(0)
    batch, steps = config["batch"], config["steps"]
    images, masks = phantom_batch(batch * (steps + WARMUP_STEPS), config["size"])
    model = compiled_unet(config["size"], config)
    result = dict(config, parameters=model.count_params())
    result["train"], result["busy"] = time_training(model, images, masks, batch, steps)
    if compare_feed:
        result["premade"] = time_training(model, images, masks, batch, steps, premade=True)[0]
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.keras")
        result["predict"] = time_prediction(Path(tmp) / "model.keras", images, batch, steps)
    if config.get("progressive"):
        small_size, small_epochs, epochs = config["progressive"]
        small = compiled_unet(small_size, config)
        small_images, small_masks = phantom_batch(batch * (steps + WARMUP_STEPS), small_size)
        result["train_small"] = time_training(small, small_images, small_masks, batch, steps)[0]
        result["train_full"] = result["train"]
        result["train"] = epoch_mean(result["train_small"], result["train_full"], small_epochs, epochs)
    keras.mixed_precision.set_global_policy("float32")
    return result


def report(result):
    label = f"{result['label']}: " if result["label"] else ""
    separable = ", separable convolutions below the top level" if result.get("separable") else ""
    print(f"config: {label}{result['size']}x{result['size']}, depth {result['depth']}, {result['filters']} base filters "
          f"({result['parameters']:,} parameters){separable}, batch {result['batch']}, {result['precision']}")
    print(f"train: {result['train']:.2f} slices/s ({result['steps']} steps, input pipeline with augmentation; "
          f"{result['busy']:.1f} of {os.cpu_count()} cores busy on average)")
    if result.get("progressive"):
        small_size, small_epochs, epochs = result["progressive"]
        print(f"  progressive resizing: {result['train_small']:.2f} slices/s at {small_size}x{small_size} for "
              f"{small_epochs} epochs, {result['train_full']:.2f} at {result['size']}x{result['size']} for "
              f"{epochs - small_epochs}: {result['train']:.2f} slices/s over the run's {epochs} epochs")
    if "premade" in result:
        print(f"train on a pre-made batch: {result['premade']:.2f} slices/s (input pipeline at "
              f"{100 * result['train'] / result['premade']:.0f}% of that speed)")
    print(f"predict: {result['predict']:.2f} slices/s (saved .keras model)")


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
        configs = [dict(label="", filters=4, depth=2, size=32, batch=4, precision=args.precision, steps=2)]
    elif args.recipe:
        configs = [recipe_config(name, args.steps) for name in args.recipe]
    else:
        configs = [dict(label="", filters=args.filters, depth=args.depth, size=args.size, batch=args.batch,
                        precision=args.precision, steps=args.steps)]
    if args.slices:
        for config in configs:
            config["steps"] = max(1, args.slices // config["batch"])
    results = [measure(config, args.compare_feed) for config in configs]

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
