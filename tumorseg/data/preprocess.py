"""Turn a slice at its native resolution into the model's input, and back.

One set of functions shared by mat_to_numpy, evaluate and prediction, so every
image goes through exactly the same resize and normalisation.

Normalisation rule: the image's minimum is subtracted (MRI magnitudes start at
0, as in every figshare slice, so this changes nothing there; a scan exported
with an offset loses it), then the image is divided by its `percentile`-th
intensity percentile (default 99.5, computed on the resized slice) and clipped
to [0, 1]. The percentile ignores the few brightest pixels (fat, vessels,
enhancing rims) that would otherwise set the scale; a blank image stays zero.
So the model input does not depend on how a slice was scaled or offset
(tests/serve/test_invariance.py).
"""

import numpy as np
from PIL import Image


def resize_area(array: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D array to (size, size) as float32: area averaging when shrinking, bilinear when growing.

    Integer images within 0..65535 (MRI magnitudes) go through Pillow's 16-bit path, which is
    several times faster than float for the same area average; others (negative values) go through float.
    """
    array = np.asarray(array)
    height, width = array.shape
    if (height, width) == (size, size):
        return array.astype(np.float32)
    resample = Image.Resampling.BOX if height >= size and width >= size else Image.Resampling.BILINEAR
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and \
            array.max() <= np.iinfo(np.uint16).max:
        image = Image.fromarray(array.astype(np.uint16))
    else:
        image = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), resample), dtype=np.float32)


def normalize_intensity(image: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale to [0, 1] by the image's own percentile (see module docstring)."""
    image = np.asarray(image, dtype=np.float32)
    if image.size:
        image = image - image.min()
    scale = np.percentile(image, percentile)
    if scale <= 0:
        return np.zeros_like(image)
    return np.clip(image / scale, 0.0, 1.0)


def preprocess_image(image: np.ndarray, size: int, percentile: float = 99.5) -> np.ndarray:
    """Native-resolution slice -> (size, size) float32 in [0, 1]."""
    return normalize_intensity(resize_area(image, size), percentile)


def preprocess_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Native-resolution binary mask -> (size, size) uint8; a pixel is tumor if at least half its area was."""
    mask = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    if mask.size != (size, size):
        mask = mask.resize((size, size), Image.Resampling.BOX)
    return (np.asarray(mask) >= 128).astype(np.uint8)


def resize_probabilities(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (S, S) probability map to a native (height, width)."""
    height, width = shape
    image = Image.fromarray(np.asarray(probabilities, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def shrink(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, S, S) model inputs and masks shrunk to (n, size, size) for progressive resizing: area averages
    of the images (already normalised, so they stay in [0, 1]) and the half-area rule for the masks."""
    return (np.array([resize_area(image, size) for image in images], np.float32).reshape(-1, size, size),
            np.array([preprocess_mask(mask, size) for mask in masks], np.uint8).reshape(-1, size, size))
