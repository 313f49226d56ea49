"""Segment slices from your own code: the one inference path of predict, with the preprocessing built in.

    from tumorseg.serve.segmenter import Segmenter
    segmenter = Segmenter.load("models/unet")  # a model folder (tumorseg.bundle): trained, released or exported
    result = segmenter("scan.dcm")             # or a 2-D array, at any size and scale
    result.mask, result.area_mm2, result.confidence, result.review, result.tumor_type

Each slice goes through tumorseg.data.preprocess.preprocess_image with the folder's preprocessing.json
(the resize and normalisation of training); its probability map is resized back to the slice's own size,
then thresholded and post-processed as evaluate chose (tumorseg.evaluate.choices.Choices.masks); its confidence and review flag
come from Choices.score on the model-resolution map, as in evaluate.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorseg import LABEL_NAMES
from tumorseg.bundle import (
    CHOICES_FILE,
    DEFAULT_FOLDER,
    PREPROCESSING_FILE,
    BundleError,
    Preprocessing,
    is_percentile,
    model_file,
)
from tumorseg.data.preprocess import preprocess_image, resize_probabilities
from tumorseg.errors import InputError
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.postprocess import PostProcess
from tumorseg.model.outputs import MASK_OUTPUT, has_type_head
from tumorseg.model.probabilities import DEFAULT_BATCH_SIZE, predict
from tumorseg.serve.readers import checked_slice, checked_spacing, read_scan

DEFAULT_PERCENTILE = 99.5
MAX_INPUT_SIZE = 4096  # pixels a side of a model's input; a U-Net for MRI slices takes 64 to 512


@dataclass(frozen=True)
class Segmentation:
    """One slice's result, at the slice's own size."""

    mask: np.ndarray  # (H, W) bool
    probabilities: np.ndarray  # (H, W) float32 tumour probability
    spacing: tuple[float, float] | None  # (row mm, column mm) when known
    tumor_type: str | None  # with the type head: meningioma, glioma or pituitary
    type_probability: float | None
    confidence: float  # in (0, 1): how far to trust the mask (tumorseg.evaluate.confidence)
    review: bool  # flagged for a person to check
    choices: Choices  # the threshold, post-processing and TTA used

    @property
    def tumor_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def area_mm2(self) -> float | None:
        """Tumour area in mm², when the slice's pixel spacing is known."""
        return None if self.spacing is None else self.tumor_pixels * self.spacing[0] * self.spacing[1]


def segmentation_model(model_path: str | Path):
    """The model (a .keras file, or a .onnx export run by onnxruntime without TensorFlow) and its image size
    S; InputError unless it maps (N, S, S, 1) to (N, S, S, 1) (its mask output, with the type head)."""
    if Path(model_path).suffix.lower() == ".onnx":
        from tumorseg.serve.onnx_model import OnnxModel

        model = OnnxModel(model_path)
    else:
        from tumorseg.model.load import load_model  # Keras, and with it TensorFlow

        model = load_model(model_path)
    input_shape, output_shape = getattr(model, "input_shape", None), getattr(model, "output_shape", None)
    if has_type_head(model) and isinstance(output_shape, list):
        output_shape = output_shape[model.output_names.index(MASK_OUTPUT)]
    size = input_shape[1] if isinstance(input_shape, tuple) and len(input_shape) == 4 else None
    expected = (size, size, 1)
    if not isinstance(size, int) or input_shape[1:] != expected or not isinstance(output_shape, tuple) \
            or output_shape[1:] != expected:
        raise InputError(
            f"{model_path}: input {input_shape} and output {output_shape} are not those of this project's "
            "segmentation model ((None, S, S, 1) to (None, S, S, 1)); give the folder the train stage writes "
            f"({DEFAULT_FOLDER})."
        )
    if size > MAX_INPUT_SIZE:
        raise InputError(f"{model_path}: input of {size} x {size} pixels, more than the {MAX_INPUT_SIZE} a side a "
                         "model of this project takes; refusing to run it (a batch would take gigabytes).")
    return model, size


def bundle_choices(folder: Path, threshold: float | None = None, postprocess: str | None = None,
                   tta: str | None = None) -> Choices:
    """Evaluate's choices from the model folder, each replaced by the value given (not None). A folder without
    choices.json is used only with an explicit threshold (then no post-processing or TTA unless given, and an
    unfitted confidence score); never with silent defaults."""
    given = PostProcess(postprocess) if postprocess else None
    if (folder / CHOICES_FILE).exists():
        return Choices.load(folder / CHOICES_FILE).with_options(threshold, given, tta)
    if threshold is None:
        raise BundleError(f"{folder}: no {CHOICES_FILE}, so no threshold chosen on validation for this model; run "
                          "the evaluate stage (dvc repro evaluate), copy the whole model folder, or give the "
                          "threshold explicitly (--threshold, Segmenter.load(..., threshold=...)).")
    return Choices(threshold).with_options(None, given, tta)


def checked_percentile(percentile: float, source: str) -> float:
    """`percentile` as a float; InputError naming `source` unless it is in (0, 100]."""
    if not is_percentile(percentile):
        raise InputError(f"{source}: percentile {percentile!r} must be a number in (0, 100].")
    return float(percentile)


class Segmenter:
    """A trained model with the choices evaluate made for it; call it on slices."""

    def __init__(self, model, size: int, choices: Choices = Choices(), percentile: float = DEFAULT_PERCENTILE,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        percentile = checked_percentile(percentile, "the percentile")
        if batch_size < 1:
            raise InputError(f"batch size {batch_size} must be at least 1.")
        self.model, self.size, self.choices = model, size, choices
        self.percentile, self.batch_size = percentile, batch_size

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_FOLDER, *, threshold: float | None = None,
             postprocess: str | None = None, tta: str | None = None, percentile: float | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE) -> "Segmenter":
        """The model in `folder` (tumorseg.bundle: model.keras or model.onnx, preprocessing.json, choices.json)
        as evaluate chose and scored it; each keyword given replaces the recorded value."""
        folder = Path(folder)
        path = model_file(folder)
        preprocessing = Preprocessing.load(folder / PREPROCESSING_FILE)
        chosen = bundle_choices(folder, threshold, postprocess, tta)
        model, size = segmentation_model(path)
        if size != preprocessing.image_size:
            raise BundleError(f"{path}: takes {size}-pixel slices, its {PREPROCESSING_FILE} says "
                              f"{preprocessing.image_size}; the folder mixes two models: copy the whole folder again.")
        percentile = preprocessing.normalize_percentile if percentile is None else percentile
        return cls(model, size, chosen, percentile, batch_size)

    @property
    def has_type_head(self) -> bool:
        return has_type_head(self.model)

    def __call__(self, image: np.ndarray | str | Path, spacing: tuple[float, float] | None = None) -> Segmentation:
        """One slice: a 2-D array, or the path of a single-slice file (any format predict reads; its
        pixel spacing is used when the file records it)."""
        if isinstance(image, (str, Path)):
            results = self.scan(image)
            if len(results) != 1:
                raise InputError(f"{image}: {len(results)} slices; use Segmenter.scan for a file of several.")
            return results[0]
        return self.batch([image], [spacing])[0]

    def scan(self, path: str | Path, axis: int = 2) -> list[Segmentation]:
        """Every slice of a file (PNG, JPEG, TIFF, DICOM, NIfTI along voxel `axis`, figshare .mat)."""
        scan = read_scan(Path(path), axis)
        return self.batch(scan.slices, [scan.spacing] * len(scan.slices))

    def batch(self, images: Sequence[np.ndarray],
              spacings: Sequence[tuple[float, float] | None] | None = None) -> list[Segmentation]:
        """Segment 2-D slices of any sizes together, in batches of `batch_size`. Each slice is an array of
        real numbers (non-finite pixels count as 0, as the file readers read them); each spacing None or
        (row mm, column mm), positive and at most 100 mm."""
        images = [checked_slice(f"slice {i}", image) for i, image in enumerate(images)]
        spacings = list(spacings) if spacings is not None else [None] * len(images)
        if len(spacings) != len(images):
            raise InputError(f"{len(spacings)} spacings for {len(images)} slices; give one per slice (or None).")
        spacings = [None if spacing is None else checked_spacing(f"slice {i}", spacing)
                    for i, spacing in enumerate(spacings)]
        if not images:
            return []
        inputs = np.stack([preprocess_image(image, self.size, self.percentile) for image in images])
        unusable = [i for i, model_input in enumerate(inputs) if not np.isfinite(model_input).all()]
        if unusable:
            raise InputError(f"slice {unusable[0]}: its values span more than float32 can hold, so it cannot be "
                             "normalised; rescale it (or give it as integers).")
        found = predict(self.model, inputs, np.arange(len(inputs)), self.batch_size, self.choices.tta)
        chosen = self.choices
        _, scores, _ = chosen.score(found)  # at the model's resolution, as in evaluate
        flags = chosen.confidence.flags(scores)
        results = []
        for i, image in enumerate(images):
            probabilities = resize_probabilities(found.probabilities[i], image.shape)
            mask = chosen.masks(probabilities)
            kind, kind_probability = None, None
            if found.types is not None:
                best = int(np.argmax(found.types[i]))
                kind, kind_probability = LABEL_NAMES[best + 1], float(found.types[i][best])
            results.append(Segmentation(mask, probabilities, spacings[i], kind, kind_probability,
                                        float(scores[i]), bool(flags[i]), chosen))
        return results
