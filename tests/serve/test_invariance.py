"""Masks that do not depend on how a slice was scaled or exported: the same slice multiplied by a constant,
offset, stored as an 8-bit PNG instead of int16 .mat, or given at 256 instead of 512 pixels.

The model is a small U-Net trained here on the genuine slices of the shared sample, so the masks compared
are a real network's (its own tumours found, not an identity's copy of the input). Stated tolerances:
scale and offset change at most 0.01% of the pixels; an 8-bit export and half the resolution keep the
mask's Dice to the original at 0.95 or more.
"""

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import SAMPLE_DIR
from tests.helpers import model_folder
from tumorseg.data.matfile import read_slice
from tumorseg.data.preprocess import preprocess_image, preprocess_mask
from tumorseg.evaluate.metrics import dice_per_image
from tumorseg.model.losses import BceDiceLoss
from tumorseg.model.unet import build_unet
from tumorseg.serve.segmenter import Segmenter

SIZE = 128
pytestmark = pytest.mark.slow


def genuine_slices(sample):
    """Every genuine 512-px slice in the shared sample."""
    manifest = pd.read_csv(sample / "manifest.csv")
    return [read_slice(sample / "mat" / f"{index}.mat", with_border=False)
            for index in manifest[manifest["img_shape"] == "512x512"]["index"]]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A small U-Net trained on the sample's genuine slices (seeded), as a Segmenter with threshold 0.5."""
    if not (SAMPLE_DIR / "mat").is_dir():
        pytest.skip(f"real figshare sample not found at {SAMPLE_DIR.resolve()}: these tests read the shared sample")
    slices = genuine_slices(SAMPLE_DIR)
    images = np.stack([preprocess_image(s.image, SIZE) for s in slices])[..., None]
    masks = np.stack([preprocess_mask(s.mask, SIZE) for s in slices])[..., None].astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_unet(SIZE, depth=3, filters=8, dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), BceDiceLoss())
    model.fit(images, masks, batch_size=8, epochs=40, verbose=0)
    return Segmenter.load(model_folder(tmp_path_factory.mktemp("model"), model))


@pytest.fixture
def images(real_sample):
    """The first genuine 512-px slice of each class in the shared sample."""
    manifest = pd.read_csv(real_sample / "manifest.csv")
    first = manifest[manifest["img_shape"] == "512x512"].groupby("label")["index"].min()
    assert len(first) == 3, "the sample holds a genuine slice of each class"
    return [read_slice(real_sample / "mat" / f"{index}.mat", with_border=False) for index in first]


def mask_dice(a, b):
    return float(dice_per_image(a[None], b[None])[0])


def test_the_trained_model_finds_each_tumour(segmenter, images):
    # the comparisons below are between real masks: each reference overlaps its tumour
    for found in images:
        reference = segmenter(found.image).mask
        assert reference.any() and mask_dice(reference, found.mask > 0) >= 0.3


def test_scale_and_offset_change_nothing(segmenter, images):
    checked = 0
    for found in images:
        reference = segmenter(found.image.astype(np.float32)).mask
        for changed in (found.image * 3.7, found.image + 500.0, found.image * 0.02 - 30.0):
            assert (segmenter(changed.astype(np.float32)).mask == reference).mean() >= 0.9999
            checked += 1
    assert checked == 9


def test_an_8_bit_png_export_keeps_the_mask(segmenter, images, tmp_path):
    for k, found in enumerate(images):
        image = found.image
        reference = segmenter(image).mask
        exported = np.round(255.0 * image / image.max()).astype(np.uint8)  # as a viewer's PNG export
        Image.fromarray(exported).save(tmp_path / f"{k}.png")
        assert reference.any() and mask_dice(segmenter(tmp_path / f"{k}.png").mask, reference) >= 0.95
    assert k == 2


def test_half_the_resolution_keeps_the_mask(segmenter, images):
    for k, found in enumerate(images):
        height, width = found.image.shape
        half = np.round(found.image.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))).astype(np.int16)
        reference = preprocess_mask(segmenter(found.image).mask, height // 2).astype(bool)
        assert reference.any() and mask_dice(segmenter(half).mask, reference) >= 0.95
    assert k == 2
