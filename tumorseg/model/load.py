"""Load a trained Keras model file for inference (its predictions: tumorseg.model.probabilities).

A .keras file is a zip archive of config.json, metadata.json and model.weights.h5. Before Keras reads it,
the archive is checked here, so a file from elsewhere can neither pull in another local file nor take
gigabytes: its members' declared sizes are capped, and the HDF5 weights may hold no external or soft link,
external storage or virtual dataset (older Keras releases follow those, copying a local file into the
weights).
"""

import io
import zipfile
from pathlib import Path

import h5py
import keras

import tumorseg.model.losses  # noqa: F401  registers the custom loss and metric
from tumorseg.data.hdf5 import stored_here
from tumorseg.errors import InputError

MAX_CONFIG_BYTES = 16 * 2**20  # config.json and metadata.json: a U-Net's are tens of kB
MAX_WEIGHTS_BYTES = 2**30  # all weights together; the reference U-Net's are 91 MB in float32


def check_weights_stored_here(path: Path, group: h5py.Group, seen: set | None = None) -> None:
    """InputError unless every object under `group` is stored in the file itself (tumorseg.data.hdf5.stored_here: hard
    links only, no external storage or virtual data); each group is visited once (hard links may loop)."""
    seen = set() if seen is None else seen
    for name in group:
        item = stored_here(path, group, name, what="a saved model", error=InputError)
        if isinstance(item, h5py.Group) and item.id not in seen:  # ids of one object compare equal
            seen.add(item.id)
            check_weights_stored_here(path, item, seen)


def check_keras_archive(path: Path, fix: str) -> None:
    """InputError unless `path` is a zip archive whose members declare sane sizes and whose HDF5 weights
    are stored in the archive itself (see the module docstring)."""
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras model (a .keras file is a zip archive; this one is damaged, "
                         f"truncated or of another kind); give the file the train stage writes, or {fix}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            weights = [member for member in members if member.filename.endswith(".h5")]
            for member in members:
                if member not in weights and member.file_size > MAX_CONFIG_BYTES:
                    raise InputError(f"{path}: its member {member.filename} declares "
                                     f"{member.file_size / 2**20:,.0f} MiB, more than the "
                                     f"{MAX_CONFIG_BYTES / 2**20:,.0f} MiB a model of this project needs; refusing "
                                     "to load it.")
            if sum(member.file_size for member in weights) > MAX_WEIGHTS_BYTES:
                raise InputError(f"{path}: its weights declare more than {MAX_WEIGHTS_BYTES / 2**30:g} GiB; refusing "
                                 "to load it.")
            for member in weights:
                with h5py.File(io.BytesIO(archive.read(member)), "r") as stored:
                    check_weights_stored_here(path, stored)
    except InputError:
        raise
    except Exception as error:  # zipfile, zlib and h5py raise many kinds for a damaged archive
        raise InputError(f"{path}: a damaged Keras archive ({type(error).__name__}: {error}); {fix}") from None


def load_model(model_path: str | Path) -> keras.Model:
    """Load the Keras model for inference, or raise naming the file and the fix."""
    model_path = Path(model_path)
    fix = "run the train stage first (dvc repro train)."
    if not model_path.exists():
        raise InputError(f"{model_path}: model file not found; {fix}")
    if not model_path.is_file():
        raise InputError(f"{model_path}: not a regular file (a folder, FIFO or device); give the .keras file "
                         "that the train stage writes (models/model.keras).")
    check_keras_archive(model_path, fix)
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
