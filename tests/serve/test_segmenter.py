"""The Python API: Segmenter on arrays and files, results at the slice's own size, everything from one model folder."""


import keras
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.helpers import identity_model, model_folder
from tumorseg.bundle import BundleError, CHOICES_FILE, PREPROCESSING_FILE, Preprocessing
from tumorseg.errors import InputError
from tumorseg.evaluate.choices import Choices
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
    folder = tmp_path_factory.mktemp("model")
    return model_folder(folder / "identity", identity_model(folder / "identity.keras", SIZE))


def test_mask_and_probabilities_come_back_at_the_slice_size(identity, tmp_path):
    segmenter = Segmenter.load(identity)
    result = segmenter(blob_image(), spacing=(0.5, 2.0))
    truth = blob_image() > 0
    assert result.mask.shape == result.probabilities.shape == (64, 96)
    assert (result.mask & truth).sum() / (result.mask | truth).sum() > 0.9
    assert result.tumor_pixels == int(result.mask.sum()) and result.area_mm2 == pytest.approx(result.tumor_pixels)
    assert result.tumor_type is None and result.type_probability is None  # no type head
    assert 0 < result.confidence < 1 and result.choices.threshold == 0.5


def test_a_path_gives_the_same_result_as_its_array(identity, tmp_path):
    Image.fromarray(blob_image()).save(tmp_path / "slice.png")
    segmenter = Segmenter.load(identity)
    from_file, from_array = segmenter(tmp_path / "slice.png"), segmenter(blob_image())
    np.testing.assert_array_equal(from_file.mask, from_array.mask)
    assert from_file.spacing is None and from_file.area_mm2 is None


def test_batch_handles_slices_of_several_sizes(identity):
    images = [blob_image(), blob_image((40, 40), (5, 20, 5, 20)), blob_image((200, 120), (50, 150, 30, 90))]
    results = Segmenter.load(identity, batch_size=2).batch(images)
    assert [result.mask.shape for result in results] == [image.shape for image in images]
    for image, result in zip(images, results):
        truth = image > 0
        assert (result.mask & truth).sum() / (result.mask | truth).sum() > 0.9


def test_choices_and_the_confidence_model_come_from_the_folder(identity, tmp_path):
    scorer = ConfidenceModel({"mean_inside": 1.0}, 0.0, review_threshold=0.99, fitted=True)
    folder = model_folder(tmp_path / "chosen", identity / "model.keras", choices=Choices(1.0, tta="hflip",
                                                                                          confidence=scorer))
    segmenter = Segmenter.load(folder)
    assert segmenter.choices.tta == "hflip" and segmenter.choices.confidence == scorer
    result = segmenter(blob_image())
    assert result.choices.threshold == 1.0 and result.review  # sigmoid(mean_inside) <= 0.99 always
    assert Segmenter.load(folder, threshold=0.25).choices.threshold == 0.25


def test_the_percentile_comes_from_the_folder(identity, tmp_path):
    folder = model_folder(tmp_path / "p90", identity / "model.keras", percentile=90.0)
    assert Segmenter.load(folder).percentile == 90.0 and Segmenter.load(identity).percentile == 99.5
    assert Segmenter.load(folder, percentile=95).percentile == 95.0


def test_a_folder_without_choices_needs_an_explicit_threshold(identity, tmp_path):
    folder = model_folder(tmp_path / "unevaluated", identity / "model.keras", choices=None)
    with pytest.raises(BundleError, match=f"no {CHOICES_FILE}, so no threshold chosen on validation"):
        Segmenter.load(folder)
    given = Segmenter.load(folder, threshold=0.3, tta="hflip")
    assert (given.choices.threshold, given.choices.tta, str(given.choices.postprocess)) == (0.3, "hflip", "none")
    assert not given.choices.confidence.fitted


def test_a_model_file_alone_or_a_folder_missing_a_file_is_refused(identity, tmp_path):
    with pytest.raises(BundleError, match="a model file on its own; give the folder"):
        Segmenter.load(identity / "model.keras")
    with pytest.raises(BundleError, match="no such model folder"):
        Segmenter.load(tmp_path / "absent")
    folder = model_folder(tmp_path / "bare", identity / "model.keras")
    (folder / PREPROCESSING_FILE).unlink()
    with pytest.raises(BundleError, match=f"{PREPROCESSING_FILE}: not found"):
        Segmenter.load(folder)
    Preprocessing(SIZE * 2, 99.5).save(folder / PREPROCESSING_FILE)
    with pytest.raises(BundleError, match="the folder mixes two models"):
        Segmenter.load(folder)
    (folder / PREPROCESSING_FILE).write_text('{"format": 1, "image_size": 32}')
    with pytest.raises(BundleError, match="unusable preprocessing"):
        Segmenter.load(folder)


def test_a_type_head_gives_the_type(tmp_path):
    keras.utils.set_random_seed(0)
    folder = model_folder(tmp_path / "typed", build_unet(SIZE, depth=2, filters=4, classify=True))
    result = Segmenter.load(folder)(blob_image())
    assert result.tumor_type in ("meningioma", "glioma", "pituitary") and 0 < result.type_probability <= 1


def test_a_file_of_several_slices_needs_scan(identity, tmp_path):
    volume = np.stack([blob_image((40, 40), (5, 20, 5, 20))] * 3, axis=2).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 3.0, 1.0])), tmp_path / "volume.nii.gz")
    segmenter = Segmenter.load(identity)
    with pytest.raises(InputError, match="3 slices; use Segmenter.scan"):
        segmenter(tmp_path / "volume.nii.gz")
    results = segmenter.scan(tmp_path / "volume.nii.gz")
    assert len(results) == 3 and results[0].spacing == pytest.approx((0.9, 0.9))


def test_bad_settings_and_slices_are_refused(identity):
    with pytest.raises(InputError, match="percentile 0 must be a number in"):
        Segmenter.load(identity, percentile=0)
    with pytest.raises(InputError, match="expected a 2-D image"):
        Segmenter.load(identity).batch([np.zeros((4, 4, 3))])


@pytest.fixture(scope="module")
def small_unet(tmp_path_factory):
    """A small U-Net with seeded random weights: real convolutions, through which one NaN reaches every pixel."""
    keras.utils.set_random_seed(3)
    return Segmenter.load(model_folder(tmp_path_factory.mktemp("unet"), build_unet(SIZE, depth=2, filters=4)))


@pytest.mark.parametrize("dtype, bad", [(np.float32, np.nan), (np.float32, -np.inf), (np.float16, np.inf),
                                        (np.float64, 1e300)])
def test_a_non_finite_pixel_counts_as_zero_not_as_an_empty_confident_mask(small_unet, dtype, bad):
    image = blob_image().astype(dtype)
    image[3, 5] = 0
    clean = small_unet(image)
    image[3, 5] = bad
    found = small_unet(image)
    assert np.isfinite(found.probabilities).all() and np.isfinite(found.confidence)
    np.testing.assert_array_equal(found.mask, clean.mask)
    assert found.confidence == pytest.approx(clean.confidence)


def test_a_slice_the_model_cannot_score_is_flagged_for_review(tmp_path):
    model = keras.Sequential([keras.Input((SIZE, SIZE, 1)),
                              keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(np.nan))])
    folder = model_folder(tmp_path / "broken", model)  # every output NaN, as from weights that diverged
    result = Segmenter.load(folder)(blob_image())
    assert not result.mask.any() and result.review
    assert ConfidenceModel(review_threshold=0.2).flags(np.array([np.nan, 0.1, 0.3])).tolist() == [True, True, False]


@pytest.mark.parametrize("spacing", [(-0.5, 0.5), (0.0, 1.0), (np.nan, 1.0), (1.0, np.inf), (0.5, 0.5, 1.0),
                                     ("a", "b"), 0.5, (500.0, 1.0)])
def test_an_impossible_spacing_is_refused(identity, spacing):
    segmenter = Segmenter.load(identity)
    with pytest.raises(InputError, match=r"slice 0: pixel spacing .* is not a pair of positive sizes"):
        segmenter(blob_image(), spacing=spacing)


@pytest.mark.parametrize("image", [blob_image().astype(np.complex64), np.full((8, 8), "12"),
                                   np.zeros((8, 8), dtype=[("a", "i4"), ("b", "f4")]),
                                   np.zeros((8, 8), dtype="datetime64[s]"), np.zeros((8, 8), dtype=object)])
def test_a_slice_that_is_not_real_numbers_is_refused(identity, image):
    segmenter = Segmenter.load(identity)
    with pytest.raises(InputError, match=f"slice 0: pixel type .* is not a real number type"):
        segmenter(image)

