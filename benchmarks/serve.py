"""Benchmark prediction speed (slices/s) of the trained model's architecture: Keras (TensorFlow) against
the ONNX export run by onnxruntime, on the same preprocessed slices, batch by batch.

    python benchmarks/serve.py                 # the model of params.yaml (the CPU recipe), 320 slices, batch 32
    python benchmarks/serve.py --model models/unet/model.keras --slices 640
    python benchmarks/serve.py --quick         # a tiny model and a few slices, to check the script runs

An untrained model of params.yaml's architecture is timed unless --model names a trained one: the speed
depends on the architecture, not on the weights. The first batch of each (tracing, session set-up) is not
timed. Masks of the two are compared at 0.5.
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
import numpy as np

from tumorseg.config import load_params
from tumorseg.data.phantoms import phantom_arrays
from tumorseg.model.build import build_model
from tumorseg.model.load import load_model
from tumorseg.model.outputs import split_outputs
from tumorseg.serve.export import export_onnx
from tumorseg.serve.onnx_model import OnnxModel
from tumorseg.train.devices import cpu_flags, cpu_summary


def slices_per_second(model, images: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Slices/s of model.predict_on_batch over `images` (the first batch untimed) and the probabilities."""
    split_outputs(model.predict_on_batch(images[:batch, ..., None]))
    start, found = time.perf_counter(), []
    for first in range(0, len(images), batch):
        found.append(split_outputs(model.predict_on_batch(images[first:first + batch, ..., None]))[0])
    return len(images) / (time.perf_counter() - start), np.concatenate(found)[..., 0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a trained .keras model (default: params.yaml's architecture)")
    parser.add_argument("--slices", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    params = load_params("params.yaml")
    if args.quick:
        params = params.model_copy(update={"model": params.model.model_copy(update={"depth": 2, "filters": 4})})
        args.slices, args.batch = 16, 8
    keras_model = load_model(args.model) if args.model else build_model(params, params.data.image_size)
    size = keras_model.input_shape[1]
    images, _, _ = phantom_arrays(args.slices, size)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(keras_model, Path(tmp) / "model.onnx")
        onnx_model = OnnxModel(Path(tmp) / "model.onnx")
        keras_speed, keras_probs = slices_per_second(keras_model, images, args.batch)
        onnx_speed, onnx_probs = slices_per_second(onnx_model, images, args.batch)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", cpu_summary(cpu_flags()), "|", platform.python_version())
    print(f"config: {args.model or 'params.yaml architecture (untrained)'}, {size}x{size}, batch {args.batch}, "
          f"{args.slices} slices")
    print(f"predict: Keras/TensorFlow {keras_speed:.1f} slices/s, onnxruntime {onnx_speed:.1f} slices/s "
          f"({onnx_speed / keras_speed:.2f}x); max |probability difference| "
          f"{np.abs(onnx_probs - keras_probs).max():.2g}, masks agree on "
          f"{((onnx_probs >= 0.5) == (keras_probs >= 0.5)).mean():.4%} of pixels")


if __name__ == "__main__":
    main()
