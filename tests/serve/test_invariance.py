"""Masks that do not depend on how a slice was scaled or exported: the same slice multiplied by a constant,
offset, stored as an 8-bit PNG instead of int16 .mat, or given at 256 instead of 512 pixels.

The model is the identity (the probability is the model input), so these check what every model sees:
the input that preprocessing makes of the slice. Stated tolerances: scale and offset change nothing;
an 8-bit export and half the resolution keep the mask's Dice to the original at 0.95 or more.
"""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import identity_model
from tumorseg.data.matfile import read_slice
from tumorseg.data.preprocess import preprocess_mask
from tumorseg.evaluate.metrics import dice_per_image
from tumorseg.serve.segmenter import Segmenter

SIZE = 128


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    model = identity_model(tmp_path_factory.mktemp("model") / "identity.keras", SIZE)
    return Segmenter.load(model, eval_metrics=None, params=None)


@pytest.fixture
def images(real_sample):
    """The first genuine 512-px slice of each class in the shared sample."""
    manifest = pd.read_csv(real_sample / "manifest.csv")
    first = manifest[manifest["img_shape"] == "512x512"].groupby("label")["index"].min()
    return [read_slice(real_sample / "mat" / f"{index}.mat", with_border=False).image for index in first]


def mask_dice(a, b):
    return float(dice_per_image(a[None], b[None])[0])


def test_scale_and_offset_change_nothing(segmenter, images):
    for image in images:
        reference = segmenter(image.astype(np.float32)).mask
        for changed in (image * 3.7, image + 500.0, image * 0.02 - 30.0):
            assert (segmenter(changed.astype(np.float32)).mask == reference).mean() >= 0.9999


def test_an_8_bit_png_export_keeps_the_mask(segmenter, images, tmp_path):
    for k, image in enumerate(images):
        reference = segmenter(image).mask
        exported = np.round(255.0 * image / image.max()).astype(np.uint8)  # as a viewer's PNG export
        Image.fromarray(exported).save(tmp_path / f"{k}.png")
        assert mask_dice(segmenter(tmp_path / f"{k}.png").mask, reference) >= 0.95


def test_half_the_resolution_keeps_the_mask(segmenter, images):
    for image in images:
        height, width = image.shape
        half = np.round(image.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))).astype(np.int16)
        reference = preprocess_mask(segmenter(image).mask, height // 2).astype(bool)
        assert mask_dice(segmenter(half).mask, reference) >= 0.95
