"""Load a trained Keras model file for inference (its predictions: tumorseg.model.probabilities)."""

import zipfile
from pathlib import Path

import keras

import tumorseg.model.losses  # noqa: F401  registers the custom loss and metric
from tumorseg.errors import InputError


def load_model(model_path: str | Path) -> keras.Model:
    """Load the Keras model for inference, or raise naming the file and the fix."""
    model_path = Path(model_path)
    fix = "run the train stage first (dvc repro train)."
    if not model_path.exists():
        raise InputError(f"{model_path}: model file not found; {fix}")
    if not model_path.is_file():
        raise InputError(f"{model_path}: not a regular file (a folder, FIFO or device); give the .keras file "
                         "that the train stage writes (models/model.keras).")
    if not zipfile.is_zipfile(model_path):
        raise InputError(f"{model_path}: not a Keras model (a .keras file is a zip archive; this one is damaged, "
                         f"truncated or of another kind); give the file the train stage writes, or {fix}")
    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as error:  # keras raises many types for a bad archive
        raise InputError(f"{model_path}: cannot load the model ({error}); {fix}") from error


def check_model_input(model: keras.Model, image_size: int, model_path: str | Path = "model") -> None:
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
