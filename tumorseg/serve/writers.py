"""What predict writes per slice: the mask and overlay PNGs, a NIfTI mask volume, the summary table.

Every file is written atomically and never through a symbolic link: a link already in the output folder
(say `x_mask.png -> ../notes.txt`) is replaced by the file, and what it pointed to is left alone."""

import csv
import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from tumorseg.atomic import atomic_file
from tumorseg.data.matfile import FORMULA_STARTS
from tumorseg.data.preprocess import normalize_intensity
from tumorseg.serve.readers import ScanFile, nifti_mask_volume

OUTLINE_RGB = (255, 0, 0)
SUMMARY_COLUMNS = (
    "input", "slice", "height", "width", "spacing_row_mm", "spacing_col_mm", "tumor_pixels",
    "tumor_area_mm2", "mean_probability_in_mask", "max_probability_in_image", "threshold", "postprocess",
    "tta", "tumor_type", "type_probability", "confidence", "review", "mask_png", "overlay_png",
)


def overlay_image(image: np.ndarray, mask: np.ndarray, percentile: float) -> np.ndarray:
    """RGB uint8 of the slice (scaled like the model input) with the mask outline drawn on it."""
    gray = (normalize_intensity(image, percentile) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rgb[outline] = OUTLINE_RGB
    return rgb


def write_png(path: str | Path, array: np.ndarray) -> None:
    with atomic_file(path, follow_link=False) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_nifti_mask(path: str | Path, scan: ScanFile, masks: list[np.ndarray]) -> None:
    """The masks as a uint8 .nii.gz with the input's affine and header geometry."""
    import nibabel as nib

    header = scan.nifti.header.copy()
    header.set_data_dtype(np.uint8)
    volume = nib.Nifti1Image(nifti_mask_volume(scan, masks), scan.nifti.affine, header=header)
    with atomic_file(path, follow_link=False) as tmp:
        tmp.write_bytes(gzip.compress(volume.to_bytes()))


def slice_row(scan: ScanFile, index: int, result, names: dict[str, str]) -> dict[str, object]:
    """One summary line of a slice's Segmentation (tumorseg.serve.segmenter); area only when the file records
    the pixel spacing, type only with the type head."""
    spacing, choices = result.spacing, result.choices
    inside = result.probabilities[result.mask]
    return {
        "input": str(scan.path), "slice": index, "height": result.mask.shape[0], "width": result.mask.shape[1],
        "spacing_row_mm": spacing[0] if spacing else "", "spacing_col_mm": spacing[1] if spacing else "",
        "tumor_pixels": result.tumor_pixels,
        "tumor_area_mm2": round(result.area_mm2, 4) if spacing else "",
        "mean_probability_in_mask": round(float(inside.mean()), 6) if result.tumor_pixels else "",
        "max_probability_in_image": round(float(result.probabilities.max()), 6),
        "threshold": choices.threshold, "postprocess": str(choices.postprocess), "tta": choices.tta,
        "tumor_type": result.tumor_type or "",
        "type_probability": "" if result.type_probability is None else round(result.type_probability, 6),
        "confidence": round(result.confidence, 6), "review": result.review,
        **names,
    }


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (=, +, -, @, a tab or carriage return first, as
    a file named `=HYPERLINK(...).png` gives) prefixed with a single quote; anything else as it is."""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    """A CSV table of `rows`, its text cells made spreadsheet-safe."""
    with atomic_file(path, follow_link=False) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: spreadsheet_safe(value) for key, value in row.items()} for row in rows)
