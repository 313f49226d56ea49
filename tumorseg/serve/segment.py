"""Segment read scans with the trained model: batched prediction, masks back at each slice's own size.

Each slice goes through tumorseg.data.preprocess.preprocess_image (the same resize and normalisation as
training); its probability map is resized back to the slice's resolution with resize_probabilities, then
thresholded and post-processed as evaluate chose (tumorseg.evaluate.choices), unless options say otherwise.
Each slice's confidence and review flag come from tumorseg.evaluate.confidence.score_slices on the
model-resolution map, as in evaluate.
"""

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tumorseg.data.arrays import InputError
from tumorseg.data.preprocess import preprocess_image, resize_probabilities
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.confidence import score_slices
from tumorseg.evaluate.metrics import binarize
from tumorseg.model.inference import has_type_head, load_model, predict
from tumorseg.model.unet import MASK_OUTPUT
from tumorseg.serve.readers import ScanFile, read_scan, unique_stem
from tumorseg.serve.writers import (
    overlay_image,
    slice_row,
    type_columns,
    write_nifti_mask,
    write_png,
)


@dataclass(frozen=True)
class PredictSettings:
    """How slices are segmented: the model's input size, evaluate's choices, the normalisation percentile,
    the NIfTI axis to slice along and the prediction batch size."""

    size: int
    choices: Choices
    percentile: float
    axis: int = 2
    batch_size: int = 32


def load_segmentation_model(model_path: str | Path):
    """The model and its image size S; InputError unless it maps (N, S, S, 1) to (N, S, S, 1) (its mask
    output, for a model with the type head)."""
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
            "segmentation model ((None, S, S, 1) to (None, S, S, 1)); pass --model models/model.keras "
            "written by the train stage."
        )
    return model, size


def write_scan_outputs(scan: ScanFile, stem: str, probability_maps: np.ndarray, settings: PredictSettings,
                       out_dir: Path, names_taken: set[str]) -> list[dict[str, object]]:
    """Mask and overlay PNGs per slice (and a NIfTI mask volume); returns the summary rows."""
    rows, masks = [], []
    for index, image, small in zip(scan.slice_indices, scan.slices, probability_maps):
        probabilities = resize_probabilities(small, image.shape)
        mask = settings.choices.postprocess.apply(binarize(probabilities, settings.choices.threshold))
        name = stem if len(scan.slices) == 1 and scan.kind != "nifti" else f"{stem}_slice{index:03d}"
        name = unique_stem(name, names_taken)  # vol.nii.gz slice 1 and vol_slice001.png differ
        names = {"mask_png": f"{name}_mask.png", "overlay_png": f"{name}_overlay.png"}
        write_png(out_dir / names["mask_png"], mask.astype(np.uint8) * 255)
        write_png(out_dir / names["overlay_png"], overlay_image(image, mask, settings.percentile))
        rows.append(slice_row(scan, index, mask, probabilities, settings.choices, names))
        masks.append(mask)
    if scan.kind == "nifti":
        write_nifti_mask(out_dir / f"{stem}_mask.nii.gz", scan, masks)
    return rows


def predict_pending(model, pending: list[tuple[ScanFile, str]], settings: PredictSettings, out_dir: Path,
                    names_taken: set[str]) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """Predict all slices of the read scans in batches and write their outputs."""
    rows, failures = [], []
    images = np.stack([
        preprocess_image(image, settings.size, settings.percentile)
        for scan, _ in pending for image in scan.slices
    ])
    positions = np.arange(len(images))
    predicted = predict(model, images, positions, settings.batch_size, settings.choices.tta)
    probabilities, types, chosen = predicted.probabilities, predicted.types, settings.choices
    scores, _ = score_slices(probabilities, predicted.agreement, types, chosen.threshold, chosen.postprocess,
                             chosen.confidence)
    flags = chosen.confidence.flags(scores)
    start = 0
    for scan, stem in pending:
        span = slice(start, start + len(scan.slices))
        kinds = types[span] if types is not None else [None] * len(scan.slices)
        start += len(scan.slices)
        try:
            scan_rows = write_scan_outputs(scan, stem, probabilities[span], settings, out_dir, names_taken)
            rows += [{**row, **type_columns(kind), "confidence": round(float(score), 6), "review": bool(flag)}
                     for row, kind, score, flag in zip(scan_rows, kinds, scores[span], flags[span])]
        except OSError as error:
            failures.append((scan.path, f"cannot write its outputs ({error})"))
    return rows, failures


def failure_reason(path: str | Path, error: BaseException) -> str:
    """The error text without a leading file name (the report adds it)."""
    text = str(error) or type(error).__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else f"{type(error).__name__}: {text}"


def segment_inputs(model, inputs: Iterable[tuple[Path, str]], settings: PredictSettings,
                   out_dir: Path) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """Read, predict and write every (path, output stem) of `inputs`; a file that fails is reported and
    skipped. Returns (summary rows, [(path, reason)] of the failures)."""
    rows, failures, pending, pending_slices = [], [], [], 0
    names_taken = set()  # output names given so far in this run
    for path, stem in tqdm(inputs, unit="file", disable=None, desc="predict"):
        try:
            scan = read_scan(path, settings.axis)
        except Exception as error:  # any decoder error of one file must not stop the others
            failures.append((path, failure_reason(path, error)))
            tqdm.write(f"skipped {path}: {failures[-1][1]}", file=sys.stderr)
            continue
        pending.append((scan, stem))
        pending_slices += len(scan.slices)
        if pending_slices >= settings.batch_size:
            new_rows, new_failures = predict_pending(model, pending, settings, out_dir, names_taken)
            rows, failures, pending, pending_slices = rows + new_rows, failures + new_failures, [], 0
    if pending:
        new_rows, new_failures = predict_pending(model, pending, settings, out_dir, names_taken)
        rows, failures = rows + new_rows, failures + new_failures
    return rows, failures
