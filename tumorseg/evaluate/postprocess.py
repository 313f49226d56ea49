"""Post-processing of predicted masks: connected components, chosen on validation.

A stray blob costs a per-image Dice heavily, so evaluate can clean each
predicted mask before scoring it, in one of these ways:

- "none": the thresholded mask as it is;
- "largest": only the largest connected component;
- "min_size": components smaller than a fraction of the image area are
  dropped, the fraction chosen on validation from MIN_SIZE_FRACTIONS. The
  largest component is always kept: every slice of this dataset holds a
  tumour, and an empty prediction scores 0.

Components are 8-connected. The size is a fraction of the image area so the
same setting applies at the model's resolution and at a slice's native one.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

METHODS = ("none", "largest", "min_size")
CHOICES = (*METHODS, "auto")  # auto: the best of METHODS on validation
MIN_SIZE_FRACTIONS = (0.0005, 0.001, 0.002, 0.005, 0.01)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostProcess:
    """One post-processing: `method` of METHODS, and for min_size the smallest kept fraction of the area."""

    method: str = "none"
    min_fraction: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"post-processing must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if not 0.0 <= self.min_fraction < 1.0:
            raise ValueError(f"post-processing min_fraction must be in [0, 1), got {self.min_fraction}.")

    def __str__(self):
        return f"min_size {self.min_fraction:g}" if self.method == "min_size" else self.method

    def apply(self, masks: np.ndarray) -> np.ndarray:
        """The cleaned masks, same shape as `masks` ((H, W) or (N, H, W)), boolean."""
        masks = np.asarray(masks).astype(bool)
        if self.method == "none":
            return masks
        if masks.ndim == 2:
            return self._clean(masks)
        return np.stack([self._clean(mask) for mask in masks]) if len(masks) else masks

    def _clean(self, mask):
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if count <= 1:
            return mask
        sizes = np.bincount(labels.ravel())[1:]
        if self.method == "largest":
            keep = sizes == sizes.max()
            keep[np.argmax(sizes) + 1:] = False  # of equal largest ones, the first
        else:
            keep = sizes >= self.min_fraction * mask.size
            keep[np.argmax(sizes)] = True
        return np.concatenate([[False], keep])[labels]


def candidates(choice: str) -> list[PostProcess]:
    """The post-processings that evaluate compares on validation for `evaluate.postprocess`."""
    if choice not in CHOICES:
        raise ValueError(f"evaluate.postprocess must be one of {', '.join(CHOICES)}, got {choice!r}.")
    methods = METHODS if choice == "auto" else (choice,)
    found = []
    for method in methods:
        if method == "min_size":
            found += [PostProcess("min_size", fraction) for fraction in MIN_SIZE_FRACTIONS]
        else:
            found.append(PostProcess(method))
    return found
