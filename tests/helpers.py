"""Small pieces shared by tests: params with overrides, a tiny dataset in the pipeline's layout, a fixed model and
its model folder, a simulated interruption."""

import shutil
from pathlib import Path

import keras
import numpy as np

from tumorseg.bundle import CHOICES_FILE, MODEL_FILE, PREPROCESSING_FILE, Preprocessing
from tumorseg.config import load_params
from tumorseg.experiments.recipe import load_recipe
from tumorseg.data.convert import mat_to_numpy
from tumorseg.data.split import assign_subsets, write_split
from tumorseg.data.synthetic import write_dataset
from tumorseg.evaluate.choices import Choices

REPO = Path(__file__).resolve().parents[1]


def dotted(overrides, prefix=""):
    """{"train": {"epochs": 2}} -> {"train.epochs": 2}; dotted keys stay as they are."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# The values the tests are written for: the reference recipe (recipes/reference.yaml) on a seeded random
# split, whatever params.yaml's defaults are.
TEST_BASE = {**load_recipe("reference", params_path=REPO / "params.yaml"),
             "split.scheme": "random", "split.fold": None}


def make_params(overrides=None):
    """The repository's params.yaml with TEST_BASE and then `overrides` ({"train.epochs": 2} or nested)
    applied, as checked Params."""
    return load_params(REPO / "params.yaml").replaced({**TEST_BASE, **dotted(overrides or {})})


def write_tiny_dataset(root, size=32, patients=12, slices_per_patient=3):
    """Slices with a bright 8x8 square tumour on noise; writes root/numpy/*.npy and root/split.csv."""
    root = Path(root)
    rng = np.random.default_rng(0)
    count = patients * slices_per_patient
    masks = np.zeros((count, size, size), np.uint8)
    for i in range(count):
        row, col = rng.integers(8, size - 8, 2)
        masks[i, row - 4 : row + 4, col - 4 : col + 4] = 1
    images = rng.random((count, size, size), dtype=np.float32) * 0.3 + 0.6 * masks
    pids = np.repeat([f"{100 + p}" for p in range(patients)], slices_per_patient)
    labels = np.repeat(np.arange(patients) % 3 + 1, slices_per_patient).astype(np.uint8)
    ids = np.arange(1, count + 1, dtype=np.int32)
    (root / "numpy").mkdir(parents=True, exist_ok=True)
    for name, array in dict(images=images, masks=masks, labels=labels, pids=pids, ids=ids).items():
        np.save(root / "numpy" / f"{name}.npy", array)
    write_split(ids, pids, labels, assign_subsets(pids, labels, val=0.25, test=0.25), root / "split.csv")
    return root


def identity_model(path, size):
    """A saved model whose output equals its input (a 1x1 convolution with weight 1)."""
    model = keras.Sequential(
        [keras.Input((size, size, 1)), keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones")]
    )
    model.save(path)
    return path


def model_folder(folder, model, percentile=99.5, choices=Choices()):
    """A model folder (tumorseg.bundle) of `model` (a Keras model, or the path of a saved one): model.keras,
    preprocessing.json and, unless `choices` is None, choices.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, (str, Path)):
        shutil.copyfile(model, folder / MODEL_FILE)
        model = keras.models.load_model(model, compile=False)
    else:
        model.save(folder / MODEL_FILE)
    Preprocessing(model.input_shape[1], percentile).save(folder / PREPROCESSING_FILE)
    if choices is not None:
        choices.save(folder / CHOICES_FILE)
    return folder


class StopAtEpoch(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of epoch `epoch` (0-based), like Ctrl-C."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated Ctrl-C after epoch {epoch}")


def synthetic_project(root, patients, image_size, raw_size):
    """Synthetic phantoms (4 slices per patient, raw_size pixels) in root/raw, converted to image_size
    arrays in root/numpy and split by patient (seed 0) into root/split.csv; returns root."""
    (root / "raw").mkdir()
    write_dataset(root / "raw", patients=patients, slices_per_patient=4, image_size=raw_size, seed=0)
    mat_to_numpy(root / "raw", root / "numpy", image_size=image_size)
    labels, pids = np.load(root / "numpy" / "labels.npy"), np.load(root / "numpy" / "pids.npy")
    write_split(np.load(root / "numpy" / "ids.npy"), pids, labels, assign_subsets(pids, labels, seed=0),
                root / "split.csv")
    return root
