"""Load a trained model and predict tumour probabilities in batches."""

from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

import tumorseg.losses  # noqa: F401  registers the custom loss and metric
from tumorseg.data import InputError

DEFAULT_BATCH_SIZE = 32


def load_model(model_path):
    """Load the Keras model for inference, or raise naming the file and the fix."""
    model_path = Path(model_path)
    fix = "run the train stage first (dvc repro train)."
    if not model_path.is_file():
        raise InputError(f"{model_path}: model file not found; {fix}")
    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as error:  # keras raises many types for a bad archive
        raise InputError(f"{model_path}: cannot load the model ({error}); {fix}") from error


def check_model_input(model, image_size, model_path="model"):
    """Raise when the model's fixed input size does not match the arrays."""
    shape = getattr(model, "input_shape", None)
    if not (isinstance(shape, tuple) and len(shape) == 4):
        return
    expected = (image_size, image_size, 1)
    if any(have is not None and have != want for have, want in zip(shape[1:], expected)):
        raise InputError(
            f"{model_path}: model input {shape[1:]} does not fit images {expected}; "
            "re-run the train stage with the current data.image_size (dvc repro train)."
        )


def predict_probabilities(model, images, positions, batch_size=DEFAULT_BATCH_SIZE):
    """Tumour probabilities (n, S, S) float32 of images[positions], in batches."""
    size = images.shape[1]
    out = np.empty((len(positions), size, size), dtype=np.float32)
    with tqdm(total=len(positions), desc="predict", unit="slice", disable=len(positions) <= batch_size) as bar:
        for start in range(0, len(positions), batch_size):
            batch = np.asarray(images[positions[start:start + batch_size]], dtype=np.float32)[..., None]
            probs = np.asarray(model.predict_on_batch(batch))
            if probs.size != batch.size:
                raise InputError(f"model output {probs.shape} does not match its input {batch.shape}.")
            out[start:start + len(batch)] = probs.reshape(len(batch), size, size)
            bar.update(len(batch))
    return out
