"""Predictions made on one machine and scored on another: the val and test predictions of a model, saved
compactly (a GPU machine trains, this machine evaluates; tumorseg.experiments.offline_cv).

The probabilities are stored as uint8 (p * 255, rounded: an error of at most 1/510, under a fifth of
evaluate's threshold step of 0.01), the flips' agreement and the type probabilities as float32, each
subset with the dataset indices of its slices, in one compressed .npz read with allow_pickle=False.
"""

from pathlib import Path

import numpy as np

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_file
from tumorseg.data.arrays import read_npz
from tumorseg.errors import InputError
from tumorseg.model.probabilities import Predictions

SUBSETS = ("val", "test")
LEVELS = 255


def quantize(probabilities: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(probabilities, 0.0, 1.0) * LEVELS).astype(np.uint8)


def dequantize(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / LEVELS


def save_predictions(path: str | Path, predictions: dict[str, Predictions], ids: dict[str, np.ndarray],
                     tta: str) -> None:
    """Write the Predictions of each subset (val, test) with the dataset indices of its slices."""
    arrays = {"tta": np.array(tta)}
    for subset in SUBSETS:
        predicted, subset_ids = predictions[subset], np.asarray(ids[subset], dtype=np.int32)
        if len(subset_ids) != len(predicted.probabilities):
            raise ValueError(f"{subset}: {len(subset_ids)} ids for {len(predicted.probabilities)} predictions")
        arrays[f"{subset}_ids"] = subset_ids
        arrays[f"{subset}_probabilities"] = quantize(predicted.probabilities)
        arrays[f"{subset}_agreement"] = np.asarray(predicted.agreement, dtype=np.float32)
        if predicted.types is not None:
            arrays[f"{subset}_types"] = np.asarray(predicted.types, dtype=np.float32)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:  # savez adds .npz to a bare name
            np.savez_compressed(handle, **arrays)


def load_predictions(path: str | Path, subset: str, ids: np.ndarray, image_size: int, tta: str) -> Predictions:
    """The stored Predictions of `subset`, checked against the split's slice indices `ids` (in order), the
    image size of data/numpy and evaluate.tta."""
    path = Path(path)
    fix = "make the predictions again with the same data and split (tumorseg.experiments.offline_cv)"
    contents = read_npz(path, "predictions file", fix)
    missing = [name for name in ("tta", f"{subset}_ids", f"{subset}_probabilities", f"{subset}_agreement")
               if name not in contents]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: {fix}.")
    if str(contents["tta"]) != tta:
        raise InputError(f"{path} was predicted with tta {str(contents['tta'])!r}, evaluate.tta is {tta!r}: "
                         f"set evaluate.tta={contents['tta']!s} or {fix}.")
    stored_ids, probabilities = contents[f"{subset}_ids"], contents[f"{subset}_probabilities"]
    if not np.array_equal(stored_ids, np.asarray(ids)):
        raise InputError(f"{path}: the {subset} slices ({len(stored_ids)}) are not the split's {len(ids)} "
                         f"{subset} slices in the same order: {fix}.")
    if probabilities.shape[1:] != (image_size, image_size) or probabilities.dtype != np.uint8:
        raise InputError(f"{path}: {subset} predictions of shape {probabilities.shape[1:]} ({probabilities.dtype}), "
                         f"data/numpy holds {image_size}x{image_size} slices: convert the data at the size the "
                         f"model was trained on (data.image_size) or {fix}.")
    agreement = checked_floats(path, f"{subset}_agreement", contents[f"{subset}_agreement"], (len(ids),), fix)
    types = contents.get(f"{subset}_types")
    if types is not None:
        types = checked_floats(path, f"{subset}_types", types, (len(ids), len(LABEL_NAMES)), fix)
        if not np.allclose(types.sum(axis=1), 1.0, atol=1e-3):
            raise InputError(f"{path}: {subset}_types rows do not sum to 1 (not probabilities): {fix}.")
    return Predictions(dequantize(probabilities), types, agreement)


def checked_floats(path: Path, name: str, values: np.ndarray, shape: tuple[int, ...], fix: str) -> np.ndarray:
    """`values` as float32 if it has `shape`, a real dtype and only values in [0, 1]; else InputError: a NaN
    agreement would flag every slice for review, a two-column type table would score as one class."""
    real = np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
    if values.shape != shape or not real:
        raise InputError(f"{path}: {name} is {values.dtype} {values.shape}, expected real numbers of shape {shape}: "
                         f"{fix}.")
    values = values.astype(np.float32)
    if not (np.isfinite(values).all() and values.min(initial=0.0) >= 0.0 and values.max(initial=0.0) <= 1.0):
        raise InputError(f"{path}: {name} holds values that are not finite numbers in [0, 1]: {fix}.")
    return values
