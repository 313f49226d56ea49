"""Segment read scans for the predict command: batches of slices through tumorseg.serve.segmenter.Segmenter,
and each slice's mask, overlay and summary line written out."""

import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from tumorseg.serve.readers import ScanFile, read_scan, unique_stem
from tumorseg.serve.segmenter import Segmentation, Segmenter
from tumorseg.serve.writers import overlay_image, slice_row, write_nifti_mask, write_png


def write_scan_outputs(scan: ScanFile, stem: str, results: list[Segmentation], percentile: float, out_dir: Path,
                       names_taken: set[str]) -> list[dict[str, object]]:
    """Mask and overlay PNGs per slice (and a NIfTI mask volume); returns the summary rows."""
    rows = []
    for index, image, result in zip(scan.slice_indices, scan.slices, results):
        name = stem if len(scan.slices) == 1 and scan.kind != "nifti" else f"{stem}_slice{index:03d}"
        name = unique_stem(name, names_taken)  # vol.nii.gz slice 1 and vol_slice001.png differ
        names = {"mask_png": f"{name}_mask.png", "overlay_png": f"{name}_overlay.png"}
        write_png(out_dir / names["mask_png"], result.mask.astype("uint8") * 255)
        write_png(out_dir / names["overlay_png"], overlay_image(image, result.mask, percentile))
        rows.append(slice_row(scan, index, result, names))
    if scan.kind == "nifti":
        write_nifti_mask(out_dir / f"{stem}_mask.nii.gz", scan, [result.mask for result in results])
    return rows


def predict_pending(segmenter: Segmenter, pending: list[tuple[ScanFile, str]], out_dir: Path,
                    names_taken: set[str]) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """Segment all slices of the read scans together and write their outputs."""
    rows, failures = [], []
    results = segmenter.batch([image for scan, _ in pending for image in scan.slices],
                              [scan.spacing for scan, _ in pending for _ in scan.slices])
    start = 0
    for scan, stem in pending:
        mine = results[start:start + len(scan.slices)]
        start += len(scan.slices)
        try:
            rows += write_scan_outputs(scan, stem, mine, segmenter.percentile, out_dir, names_taken)
        except OSError as error:
            failures.append((scan.path, f"cannot write its outputs ({error})"))
    return rows, failures


def failure_reason(path: str | Path, error: BaseException) -> str:
    """The error text without a leading file name (the report adds it)."""
    text = str(error) or type(error).__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else f"{type(error).__name__}: {text}"


def segment_files(segmenter: Segmenter, inputs: Iterable[tuple[Path, str]], out_dir: Path,
                   axis: int = 2) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """Read, segment and write every (path, output stem) of `inputs` (NIfTI sliced along voxel `axis`); a
    file that fails is reported and skipped. Returns (summary rows, [(path, reason)] of the failures)."""
    rows, failures, pending, pending_slices = [], [], [], 0
    names_taken = set()  # output names given so far in this run
    for path, stem in tqdm(inputs, unit="file", disable=None, desc="predict"):
        try:
            scan = read_scan(path, axis)
        except Exception as error:  # any decoder error of one file must not stop the others
            failures.append((path, failure_reason(path, error)))
            tqdm.write(f"skipped {path}: {failures[-1][1]}", file=sys.stderr)
            continue
        pending.append((scan, stem))
        pending_slices += len(scan.slices)
        if pending_slices >= segmenter.batch_size:
            new_rows, new_failures = predict_pending(segmenter, pending, out_dir, names_taken)
            rows, failures, pending, pending_slices = rows + new_rows, failures + new_failures, [], 0
    if pending:
        new_rows, new_failures = predict_pending(segmenter, pending, out_dir, names_taken)
        rows, failures = rows + new_rows, failures + new_failures
    return rows, failures
