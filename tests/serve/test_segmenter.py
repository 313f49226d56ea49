"""The Python API: Segmenter on arrays and files, results at the slice's own size, choices from eval.json."""

import json

import keras
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.helpers import identity_model
from tumorseg.errors import InputError
from tumorseg.evaluate.confidence import ConfidenceModel
from tumorseg.model.unet import build_unet
from tumorseg.serve.segmenter import Segmenter

SIZE = 32


def blob_image(shape=(64, 96), box=(16, 32, 24, 56)):
    """Zeros with a bright rectangle rows box[0]:box[1], columns box[2]:box[3] (an identity model's tumour)."""
    image = np.zeros(shape, np.uint8)
    image[box[0]:box[1], box[2]:box[3]] = 255
    return image


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return identity_model(tmp_path_factory.mktemp("model") / "identity.keras", SIZE)


def test_mask_and_probabilities_come_back_at_the_slice_size(identity, tmp_path):
    segmenter = Segmenter.load(identity, eval_metrics=None, params=None)
    result = segmenter(blob_image(), spacing=(0.5, 2.0))
    truth = blob_image() > 0
    assert result.mask.shape == result.probabilities.shape == (64, 96)
    assert (result.mask & truth).sum() / (result.mask | truth).sum() > 0.9
    assert result.tumor_pixels == int(result.mask.sum()) and result.area_mm2 == pytest.approx(result.tumor_pixels)
    assert result.tumor_type is None and result.type_probability is None  # no type head
    assert 0 < result.confidence < 1 and result.choices.threshold == 0.5


def test_a_path_gives_the_same_result_as_its_array(identity, tmp_path):
    Image.fromarray(blob_image()).save(tmp_path / "slice.png")
    segmenter = Segmenter.load(identity, eval_metrics=None, params=None)
    from_file, from_array = segmenter(tmp_path / "slice.png"), segmenter(blob_image())
    np.testing.assert_array_equal(from_file.mask, from_array.mask)
    assert from_file.spacing is None and from_file.area_mm2 is None


def test_batch_handles_slices_of_several_sizes(identity):
    images = [blob_image(), blob_image((40, 40), (5, 20, 5, 20)), blob_image((200, 120), (50, 150, 30, 90))]
    results = Segmenter.load(identity, eval_metrics=None, params=None, batch_size=2).batch(images)
    assert [result.mask.shape for result in results] == [image.shape for image in images]
    for image, result in zip(images, results):
        truth = image > 0
        assert (result.mask & truth).sum() / (result.mask | truth).sum() > 0.9


def test_choices_and_the_confidence_model_come_from_eval_json(identity, tmp_path):
    scorer = ConfidenceModel({"mean_inside": 1.0}, 0.0, review_threshold=0.99, fitted=True)
    (tmp_path / "eval.json").write_text(json.dumps({"threshold": 1.0, "tta": "hflip", **scorer.to_metrics()}))
    segmenter = Segmenter.load(identity, eval_metrics=tmp_path / "eval.json", params=None)
    assert segmenter.choices.tta == "hflip" and segmenter.choices.confidence == scorer
    result = segmenter(blob_image())
    assert result.choices.threshold == 1.0 and result.review  # sigmoid(mean_inside) <= 0.99 always
    assert Segmenter.load(identity, tmp_path / "eval.json", None, threshold=0.25).choices.threshold == 0.25


def test_a_type_head_gives_the_type(tmp_path):
    keras.utils.set_random_seed(0)
    build_unet(SIZE, depth=2, filters=4, classify=True).save(tmp_path / "typed.keras")
    result = Segmenter.load(tmp_path / "typed.keras", eval_metrics=None, params=None)(blob_image())
    assert result.tumor_type in ("meningioma", "glioma", "pituitary") and 0 < result.type_probability <= 1


def test_a_file_of_several_slices_needs_scan(identity, tmp_path):
    volume = np.stack([blob_image((40, 40), (5, 20, 5, 20))] * 3, axis=2).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 3.0, 1.0])), tmp_path / "volume.nii.gz")
    segmenter = Segmenter.load(identity, eval_metrics=None, params=None)
    with pytest.raises(InputError, match="3 slices; use Segmenter.scan"):
        segmenter(tmp_path / "volume.nii.gz")
    results = segmenter.scan(tmp_path / "volume.nii.gz")
    assert len(results) == 3 and results[0].spacing == pytest.approx((0.9, 0.9))


def test_bad_settings_and_slices_are_refused(identity):
    with pytest.raises(InputError, match="percentile 0 must be a number in"):
        Segmenter.load(identity, eval_metrics=None, params=None, percentile=0)
    with pytest.raises(InputError, match="2-D slices"):
        Segmenter.load(identity, eval_metrics=None, params=None).batch([np.zeros((4, 4, 3))])
