"""Segment new slices with the trained model, and export it for serving.

    python -m tumorseg.predict scans/ extra.dcm --out predictions/
    python -m tumorseg.predict --export exported/ --float16

Each slice goes through tumorseg.preprocess.preprocess_image (the same resize
and normalisation as training) and its probability map is resized back to the
slice's own resolution with resize_probabilities before thresholding. The
threshold, post-processing and test-time augmentation are those evaluate
chose and scored (metrics/eval.json), unless options say otherwise.

Exit status: 0 when every input was segmented, 1 when some input failed (it is
reported and skipped, the others are still written), 2 when nothing could be
done (missing or unsuitable model, bad option, output folder not empty).
"""

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from tumorseg import LABEL_NAMES, export
from tumorseg.atomic import atomic_dir, atomic_file
from tumorseg.data import InputError
from tumorseg.inference import (
    DEFAULT_BATCH_SIZE, TTA_FLIPS, check_tta, has_type_head, load_model, predict_probabilities,
)
from tumorseg.metrics import binarize
from tumorseg.model import MASK_OUTPUT
from tumorseg.config import ConfigError, load_params
from tumorseg.postprocess import PostProcess
from tumorseg.preprocess import normalize_intensity, preprocess_image, resize_probabilities
from tumorseg.readers import find_inputs, nifti_mask_volume, read_scan, unique_stem

EXIT_OK, EXIT_INPUT_FAILED, EXIT_SETUP = 0, 1, 2
DEFAULT_PERCENTILE = 99.5
DEFAULT_THRESHOLD = 0.5
OUTLINE_RGB = (255, 0, 0)
SUMMARY_COLUMNS = (
    "input", "slice", "height", "width", "spacing_row_mm", "spacing_col_mm", "tumor_pixels",
    "tumor_area_mm2", "mean_probability_in_mask", "max_probability_in_image", "threshold", "postprocess",
    "tta", "tumor_type", "type_probability", "mask_png", "overlay_png",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tumorseg.predict",
        description="Segment brain-tumour slices with the trained model, or export the model for serving.",
        epilog="Exit status: 0 all inputs done, 1 some inputs failed (reported and skipped), "
        "2 nothing done (model, options or output folder).",
    )
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="files or folders (searched recursively): PNG/JPEG/TIFF, figshare .mat, DICOM, NIfTI")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder for masks, overlays and summary.csv")
    parser.add_argument("--model", type=Path, metavar="FILE", default=Path("models/model.keras"),
                        help="Keras model (default: %(default)s)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="probability threshold (default: 'threshold' of --eval-metrics when present, else 0.5)")
    parser.add_argument("--eval-metrics", type=Path, metavar="FILE", default=Path("metrics/eval.json"),
                        help="evaluate's metrics file holding the chosen threshold (default: %(default)s)")
    parser.add_argument("--postprocess", choices=("none", "largest"),
                        help="post-processing of each mask (default: --eval-metrics' choice when present, else none)")
    parser.add_argument("--tta", choices=tuple(TTA_FLIPS),
                        help="test-time flips averaged (default: the 'tta' of --eval-metrics when present, else none)")
    parser.add_argument("--percentile", type=float, metavar="P",
                        help="normalisation percentile (default: data.normalize_percentile of --params, else 99.5)")
    parser.add_argument("--params", type=Path, metavar="FILE", default=Path("params.yaml"),
                        help="pipeline parameters (default: %(default)s)")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2),
                        help="NIfTI voxel axis to slice along (default: 2, axial for the usual RAS/LPS storage)")
    parser.add_argument("--batch-size", type=int, metavar="N", default=DEFAULT_BATCH_SIZE,
                        help="slices per prediction batch (default: %(default)s)")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="write a TensorFlow SavedModel and a float32 TFLite model to DIR")
    parser.add_argument("--float16", action="store_true", help="with --export: also a float16-quantised TFLite model")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (replacing files of the same name) and replace --export DIR")
    args = parser.parse_args(argv)
    if not args.inputs and args.export is None:
        parser.error("give input files or folders (with --out), or --export DIR.")
    if args.inputs and args.out is None:
        parser.error("--out DIR is required with inputs.")
    if args.float16 and args.export is None:
        parser.error("--float16 needs --export DIR.")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1.")
    return args


def resolve_threshold(args):
    """--threshold, else evaluate's threshold from --eval-metrics when that file exists, else 0.5."""
    if args.threshold is not None:
        threshold, source = args.threshold, "--threshold"
    elif args.eval_metrics.is_file():
        try:
            threshold = float(json.loads(args.eval_metrics.read_text())["threshold"])
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"{args.eval_metrics}: no numeric 'threshold' ({error!r}); "
                "re-run the evaluate stage (dvc repro evaluate) or pass --threshold."
            ) from error
        source = str(args.eval_metrics)
    else:
        return DEFAULT_THRESHOLD
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"{source}: threshold {threshold} must lie in [0, 1].")
    return threshold


def resolve_postprocessing(args):
    """(PostProcess, tta): each from its option, else evaluate's choice in --eval-metrics, else none."""
    try:
        chosen = json.loads(args.eval_metrics.read_text()) if args.eval_metrics.is_file() else {}
        if args.postprocess:
            postprocess = PostProcess(args.postprocess)
        else:
            postprocess = PostProcess.chosen_in(chosen)
        tta = check_tta(args.tta or chosen.get("tta", "none"), f"{args.eval_metrics} 'tta'")
    except (ValueError, TypeError, AttributeError) as error:
        raise InputError(
            f"{args.eval_metrics}: unusable post-processing or tta ({error}); "
            "re-run the evaluate stage (dvc repro evaluate) or pass --postprocess and --tta."
        ) from error
    return postprocess, tta


def resolve_percentile(args):
    """--percentile, else data.normalize_percentile of --params when that file exists, else 99.5."""
    percentile, source = args.percentile, "--percentile"
    if percentile is None and args.params.is_file():
        try:
            percentile = load_params(args.params).data.normalize_percentile
        except ConfigError as error:
            raise InputError(f"{error}\nfix the file or pass --percentile.") from None
        source = f"{args.params} data.normalize_percentile"
    if percentile is None:
        return DEFAULT_PERCENTILE
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0.0 < percentile <= 100.0:
        raise InputError(f"{source}: percentile {percentile!r} must be a number in (0, 100].")
    return float(percentile)


def load_segmentation_model(model_path):
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


def check_free(path, overwrite, option):
    """InputError when `path` is a non-empty folder (or a file) and --overwrite was not given."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: {option} must be a folder, found a file; choose another path.")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise InputError(f"{path}: {option} folder is not empty; choose a new folder or pass --overwrite.")


def overlay_image(image, mask, percentile):
    """RGB uint8 of the slice (scaled like the model input) with the mask outline drawn on it."""
    gray = (normalize_intensity(image, percentile) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
    rgb[outline] = OUTLINE_RGB
    return rgb


def write_png(path, array):
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_nifti_mask(path, scan, masks):
    """The masks as a uint8 .nii.gz with the input's affine and header geometry."""
    import nibabel as nib

    header = scan.nifti.header.copy()
    header.set_data_dtype(np.uint8)
    volume = nib.Nifti1Image(nifti_mask_volume(scan, masks), scan.nifti.affine, header=header)
    with atomic_file(path) as tmp:
        tmp.write_bytes(gzip.compress(volume.to_bytes()))


def slice_row(scan, index, mask, probabilities, settings, names):
    """One summary line; area only when the file records the pixel spacing."""
    pixels = int(mask.sum())
    spacing = scan.spacing
    inside = probabilities[mask]
    return {
        "input": str(scan.path), "slice": index, "height": mask.shape[0], "width": mask.shape[1],
        "spacing_row_mm": spacing[0] if spacing else "", "spacing_col_mm": spacing[1] if spacing else "",
        "tumor_pixels": pixels,
        "tumor_area_mm2": round(pixels * spacing[0] * spacing[1], 4) if spacing else "",
        "mean_probability_in_mask": round(float(inside.mean()), 6) if pixels else "",
        "max_probability_in_image": round(float(probabilities.max()), 6),
        "threshold": settings["threshold"], "postprocess": str(settings["postprocess"]), "tta": settings["tta"],
        **names,
    }


def type_columns(type_probs):
    """The summary's tumour type and its probability (blank for a model without the type head)."""
    if type_probs is None:
        return {"tumor_type": "", "type_probability": ""}
    best = int(np.argmax(type_probs))
    return {"tumor_type": LABEL_NAMES[best + 1], "type_probability": round(float(type_probs[best]), 6)}


def write_scan_outputs(scan, stem, probability_maps, settings, out_dir):
    """Mask and overlay PNGs per slice (and a NIfTI mask volume); returns the summary rows."""
    rows, masks = [], []
    for index, image, small in zip(scan.slice_indices, scan.slices, probability_maps):
        probabilities = resize_probabilities(small, image.shape)
        mask = settings["postprocess"].apply(binarize(probabilities, settings["threshold"]))
        name = stem if len(scan.slices) == 1 and scan.kind != "nifti" else f"{stem}_slice{index:03d}"
        name = unique_stem(name, settings["names_taken"])  # vol.nii.gz slice 1 and vol_slice001.png differ
        names = {"mask_png": f"{name}_mask.png", "overlay_png": f"{name}_overlay.png"}
        write_png(out_dir / names["mask_png"], mask.astype(np.uint8) * 255)
        write_png(out_dir / names["overlay_png"], overlay_image(image, mask, settings["percentile"]))
        rows.append(slice_row(scan, index, mask, probabilities, settings, names))
        masks.append(mask)
    if scan.kind == "nifti":
        write_nifti_mask(out_dir / f"{stem}_mask.nii.gz", scan, masks)
    return rows


def predict_pending(model, pending, settings, out_dir):
    """Predict all slices of the read scans in batches and write their outputs."""
    rows, failures = [], []
    images = np.stack([
        preprocess_image(image, settings["size"], settings["percentile"])
        for scan, _ in pending for image in scan.slices
    ])
    positions = np.arange(len(images))
    probabilities, types = predict_probabilities(model, images, positions, settings["batch_size"], settings["tta"],
                                                 with_types=True)
    start = 0
    for scan, stem in pending:
        maps = probabilities[start:start + len(scan.slices)]
        kinds = types[start:start + len(scan.slices)] if types is not None else [None] * len(scan.slices)
        start += len(scan.slices)
        try:
            scan_rows = write_scan_outputs(scan, stem, maps, settings, out_dir)
            rows += [{**row, **type_columns(kind)} for row, kind in zip(scan_rows, kinds)]
        except OSError as error:
            failures.append((scan.path, f"cannot write its outputs ({error})"))
    return rows, failures


def failure_reason(path, error):
    """The error text without a leading file name (the report adds it)."""
    text = str(error) or type(error).__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else f"{type(error).__name__}: {text}"


def segment_inputs(model, inputs, settings, out_dir):
    """Read, predict and write every input; a file that fails is reported and skipped."""
    rows, failures, pending, pending_slices = [], [], [], 0
    for path, stem in tqdm(inputs, unit="file", disable=None, desc="predict"):
        try:
            scan = read_scan(path, settings["axis"])
        except Exception as error:  # any decoder error of one file must not stop the others
            failures.append((path, failure_reason(path, error)))
            tqdm.write(f"skipped {path}: {failures[-1][1]}", file=sys.stderr)
            continue
        pending.append((scan, stem))
        pending_slices += len(scan.slices)
        if pending_slices >= settings["batch_size"]:
            new_rows, new_failures = predict_pending(model, pending, settings, out_dir)
            rows, failures, pending, pending_slices = rows + new_rows, failures + new_failures, [], 0
    if pending:
        new_rows, new_failures = predict_pending(model, pending, settings, out_dir)
        rows, failures = rows + new_rows, failures + new_failures
    return rows, failures


def write_csv(path, columns, rows):
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run_predict(model, args, settings):
    """Segment the inputs into --out; returns the exit status."""
    inputs, failures, ignored = find_inputs(args.inputs, args.out)
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if ignored:
        print(f"ignored {ignored} file(s) of unsupported type in the input folders", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, read_failures = segment_inputs(model, inputs, settings, args.out)
    failures += read_failures
    write_csv(args.out / "summary.csv", SUMMARY_COLUMNS, rows)
    if failures:
        write_csv(args.out / "failures.csv", ("input", "reason"),
                  [{"input": str(path), "reason": reason} for path, reason in failures])
    else:  # an --overwrite rerun: the failures of an earlier run are not this run's
        (args.out / "failures.csv").unlink(missing_ok=True)
    print(f"{len(rows)} slice(s) from {len(inputs) - len(read_failures)} file(s) written to {args.out}; "
          f"{len(failures)} input(s) failed (threshold {settings['threshold']:g})")
    return EXIT_INPUT_FAILED if failures else EXIT_OK


def run_export(model, args, settings):
    """SavedModel and TFLite files into --export DIR, then a check that they agree with Keras."""
    metadata = {
        "input": f"float32 (N, {settings['size']}, {settings['size']}, 1) in [0, 1] from "
                 "tumorseg.preprocess.preprocess_image",
        "output": "tumour probability, float32 (N, S, S, 1)" if not has_type_head(model) else
                  "mask: tumour probability, float32 (N, S, S, 1); tumor_type: probabilities of "
                  + ", ".join(LABEL_NAMES.values()) + ", float32 (N, 3)",
        "image_size": settings["size"], "normalize_percentile": settings["percentile"],
        "threshold": settings["threshold"],
    }
    with atomic_dir(args.export) as tmp:
        export.export_all(model, tmp, metadata, float16=args.float16)
    check = export.check_exports(model, args.export, settings["size"], settings["threshold"])
    print(f"exported to {args.export}; max |probability difference| to Keras on random inputs: "
          + ", ".join(f"{name} {value:.2g}" for name, value in check["max_difference"].items()))
    if "float16_mask_agreement" in check:
        print(f"float16 TFLite masks agree with Keras on {check['float16_mask_agreement']:.4%} of pixels")


def main(argv=None):
    args = parse_args(argv)
    try:
        settings = {"threshold": resolve_threshold(args), "percentile": resolve_percentile(args),
                    "axis": args.axis, "batch_size": args.batch_size}
        settings["postprocess"], settings["tta"] = resolve_postprocessing(args)
        settings["names_taken"] = set()  # output names given so far in this run
        if args.inputs:
            check_free(args.out, args.overwrite, "--out")
        if args.export is not None:
            check_free(args.export, args.overwrite, "--export")
        model, settings["size"] = load_segmentation_model(args.model)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP
    if args.export is not None:
        run_export(model, args, settings)
    return run_predict(model, args, settings) if args.inputs else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
