"""Model-ready phantom slices for benchmarks and tests: the synthetic generator's slices, preprocessed as
the pipeline does (no files, no stage). Stages never import this module."""

import numpy as np

from tumorseg.data.preprocess import preprocess_image, preprocess_mask
from tumorseg.data.synthetic import make_slice


def phantom_arrays(count: int, size: int, seed: int = 0,
                   distinct: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-ready phantoms for benchmarks: `count` (size, size) float32 images in [0, 1], their uint8 masks
    and labels, preprocessed as the pipeline does; `distinct` different slices are drawn and repeated."""
    raw_size = max(size, 64)
    drawn = [make_slice(np.random.default_rng([seed, i]), i % 3 + 1, str(i), raw_size)
             for i in range(min(count, distinct))]
    picks = [drawn[i % len(drawn)] for i in range(count)]
    images = np.stack([preprocess_image(s.image, size) for s in picks]).astype(np.float32)
    masks = np.stack([preprocess_mask(s.mask, size) for s in picks])
    return images, masks, np.array([s.label for s in picks])
