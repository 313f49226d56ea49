"""Load a trained model and predict tumour probabilities in batches."""

from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

import tumorseg.losses  # noqa: F401  registers the custom loss and metric
from tumorseg.data import InputError

DEFAULT_BATCH_SIZE = 32
# test-time augmentation: the flips (axes of a (N, S, S, 1) batch) whose predictions are averaged
# (vertical flips were measured to hurt on real MRI, whose up-down asymmetry the model relies on)
TTA_FLIPS = {"none": [()], "hflip": [(), (2,)]}


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


def check_tta(tta, source="evaluate.tta"):
    if tta not in TTA_FLIPS:
        raise InputError(f"{source} must be one of {', '.join(TTA_FLIPS)}, got {tta!r}.")
    return tta


def predict_batch(model, batch, tta="none"):
    """The model's probabilities for a (N, S, S, 1) batch, averaged over the flips of `tta`.

    Each flipped copy's prediction is flipped back before averaging, so a
    flip-equivariant model gives the same result with or without TTA.
    """
    total = None
    for axes in TTA_FLIPS[check_tta(tta)]:
        probs = np.asarray(model.predict_on_batch(np.flip(batch, axes) if axes else batch), dtype=np.float32)
        if probs.size != batch.size:
            raise InputError(f"model output {probs.shape} does not match its input {batch.shape}.")
        probs = probs.reshape(batch.shape)
        probs = np.flip(probs, axes) if axes else probs
        total = probs if total is None else total + probs
    return total / len(TTA_FLIPS[tta])


def predict_probabilities(model, images, positions, batch_size=DEFAULT_BATCH_SIZE, tta="none"):
    """Tumour probabilities (n, S, S) float32 of images[positions], in batches, with test-time `tta`."""
    size = images.shape[1]
    out = np.empty((len(positions), size, size), dtype=np.float32)
    with tqdm(total=len(positions), desc="predict", unit="slice", disable=len(positions) <= batch_size) as bar:
        for start in range(0, len(positions), batch_size):
            batch = np.asarray(images[positions[start:start + batch_size]], dtype=np.float32)[..., None]
            out[start:start + len(batch)] = predict_batch(model, batch, tta)[..., 0]
            bar.update(len(batch))
    return out
