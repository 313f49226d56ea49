"""A model's tumour probabilities for many slices, in batches, averaged over test-time flips: the same code
for a Keras model and for an ONNX file run by onnxruntime (tumorseg.serve.onnx_model), so it imports
neither Keras nor TensorFlow.

A model here is anything with `predict_on_batch(batch)` and `output_names` (tumorseg.model.outputs).
"""

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tumorseg import LABEL_NAMES
from tumorseg.errors import InputError
from tumorseg.model.outputs import has_type_head, split_outputs

DEFAULT_BATCH_SIZE = 32
# test-time augmentation: the flips (axes of a (N, S, S, 1) batch) whose predictions are averaged
# (vertical flips were measured to hurt on real MRI, whose up-down asymmetry the model relies on)
TTA_FLIPS = {"none": [()], "hflip": [(), (2,)]}


def check_tta(tta: str, source: str = "evaluate.tta") -> str:
    if tta not in TTA_FLIPS:
        raise InputError(f"{source} must be one of {', '.join(TTA_FLIPS)}, got {tta!r}.")
    return tta


@dataclass(frozen=True)
class Predictions:
    """What the model says about n slices: tumour probabilities (n, S, S) averaged over the TTA flips,
    type probabilities (n, 3) or None without the type head, and the flips' agreement (n,): the soft Dice
    between the plain pass and each flipped pass (1 with tta none, where there is no second pass)."""

    probabilities: np.ndarray
    types: np.ndarray | None
    agreement: np.ndarray


def soft_agreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Soft Dice 2*sum(a*b) / (sum(a^2) + sum(b^2)) of two (N, ...) probability batches, per image; two
    empty maps agree fully (a smoothing of one pixel)."""
    first = first.reshape(len(first), -1).astype(np.float64)
    second = second.reshape(len(second), -1).astype(np.float64)
    return ((2 * (first * second).sum(axis=1) + 1.0)
            / ((first ** 2).sum(axis=1) + (second ** 2).sum(axis=1) + 1.0)).astype(np.float32)


def predict_batch(model, batch: np.ndarray, tta: str = "none") -> Predictions:
    """The model's outputs for a (N, S, S, 1) batch, averaged over the flips of `tta`.

    Each flipped copy's prediction is flipped back before averaging, so a
    flip-equivariant model gives the same result with or without TTA; the type
    probabilities are averaged over the same flips.
    """
    passes, types = [], None
    for axes in TTA_FLIPS[check_tta(tta)]:
        probs, kinds = split_outputs(model.predict_on_batch(np.flip(batch, axes) if axes else batch))
        if probs.size != batch.size:
            raise InputError(f"model output {probs.shape} does not match its input {batch.shape}.")
        probs = probs.reshape(batch.shape)
        passes.append(np.flip(probs, axes) if axes else probs)
        if kinds is not None:
            types = kinds if types is None else types + kinds
    count = len(passes)
    agreement = np.mean([soft_agreement(passes[0], other) for other in passes[1:]], axis=0) if count > 1 \
        else np.ones(len(batch), np.float32)
    return Predictions(sum(passes) / count, None if types is None else types / count, agreement)


def predict(model, images: np.ndarray, positions: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
            tta: str = "none") -> Predictions:
    """The model's Predictions for images[positions], in batches, with test-time `tta`."""
    size = images.shape[1]
    out = np.empty((len(positions), size, size), dtype=np.float32)
    types = np.empty((len(positions), len(LABEL_NAMES)), dtype=np.float32) if has_type_head(model) else None
    agreement = np.ones(len(positions), dtype=np.float32)
    with tqdm(total=len(positions), desc="predict", unit="slice", disable=len(positions) <= batch_size) as bar:
        for start in range(0, len(positions), batch_size):
            batch = np.asarray(images[positions[start:start + batch_size]], dtype=np.float32)[..., None]
            found = predict_batch(model, batch, tta)
            out[start:start + len(batch)] = found.probabilities[..., 0]
            agreement[start:start + len(batch)] = found.agreement
            if types is not None:
                types[start:start + len(batch)] = found.types
            bar.update(len(batch))
    return Predictions(out, types, agreement)


def predict_probabilities(model, images: np.ndarray, positions: np.ndarray,
                          batch_size: int = DEFAULT_BATCH_SIZE, tta: str = "none") -> np.ndarray:
    """Tumour probabilities (n, S, S) float32 of images[positions] (see predict)."""
    return predict(model, images, positions, batch_size, tta).probabilities
