"""The predict command: segment new slices with the trained model, or export it for serving.

    python -m tumorseg.serve.predict scans/ extra.dcm --out predictions/
    python -m tumorseg.serve.predict --export exported/ --float16

The model is a model folder (tumorseg.bundle): models/unet/ when the pipeline has trained one, else the
released model shipped in models/released/ (it says which in one line). Its threshold, post-processing and
test-time augmentation are those evaluate chose and scored (the folder's choices.json), unless options say
otherwise; the work is done by tumorseg.serve.segmenter.Segmenter (also the Python API) and
tumorseg.serve.segment_files.

Exit status: 0 when every input was segmented; 1 when some input failed (it is
reported and skipped, the others are still written) or nothing could be done
(missing or unsuitable model, unusable choices, output folder not empty); 2
for a usage error.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_entries
from tumorseg.bundle import (
    CARD_FILE,
    CHOICES_FILE,
    DEFAULT_FOLDER,
    MODEL_FILE,
    ONNX_FILE,
    PREPROCESSING_FILE,
    RELEASED_FOLDER,
    Preprocessing,
)
from tumorseg.cli import program_name, run
from tumorseg.errors import InputError
from tumorseg.evaluate.confidence import CATCH, FEATURES, ConfidenceModel
from tumorseg.evaluate.metrics import POOR_DICE
from tumorseg.model.probabilities import DEFAULT_BATCH_SIZE, TTA_FLIPS
from tumorseg.serve import export
from tumorseg.serve.readers import find_inputs
from tumorseg.serve.segment_files import segment_files
from tumorseg.serve.segmenter import Segmenter
from tumorseg.serve.writers import SUMMARY_COLUMNS, write_csv

EXIT_OK, EXIT_INPUT_FAILED = 0, 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("tumorseg.serve.predict"),
        description="Segment brain-tumour slices with the trained model, or export the model for serving.",
        epilog="Exit status: 0 all inputs done, 1 some inputs failed (reported and skipped), "
        "2 nothing done (model, options or output folder).",
    )
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="files or folders (searched recursively): PNG/JPEG/TIFF, figshare .mat, DICOM, NIfTI")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder for masks, overlays and summary.csv")
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help=f"model folder: model.keras, or an export's model.onnx (run without TensorFlow), with its "
                             f"{PREPROCESSING_FILE} and {CHOICES_FILE} (default: {DEFAULT_FOLDER} when trained, else "
                             f"the released model, {RELEASED_FOLDER})")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help=f"probability threshold (default: the model folder's {CHOICES_FILE})")
    parser.add_argument("--postprocess", choices=("none", "largest"),
                        help=f"post-processing of each mask (default: the model folder's {CHOICES_FILE})")
    parser.add_argument("--tta", choices=tuple(TTA_FLIPS),
                        help=f"test-time flips averaged (default: the model folder's {CHOICES_FILE})")
    parser.add_argument("--percentile", type=float, metavar="P",
                        help=f"normalisation percentile (default: the model folder's {PREPROCESSING_FILE})")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2),
                        help="NIfTI voxel axis to slice along (default: 2, axial for the usual RAS/LPS storage)")
    parser.add_argument("--batch-size", type=int, metavar="N", default=DEFAULT_BATCH_SIZE,
                        help="slices per prediction batch (default: %(default)s)")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="write a TensorFlow SavedModel, a float32 TFLite model and an ONNX model to DIR")
    parser.add_argument("--float16", action="store_true", help="with --export: also a float16-quantised TFLite model")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out or --export DIR, replacing only files of the same name")
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


def model_folder(given: Path | None) -> Path:
    """--model, else the trained model folder when the pipeline has written one, else the released model (said
    in one line, so a user knows which model segmented the scans)."""
    if given is not None:
        return given
    if (DEFAULT_FOLDER / MODEL_FILE).exists():
        return DEFAULT_FOLDER
    print(f"no trained model in {DEFAULT_FOLDER}: using the released model, {RELEASED_FOLDER} "
          f"(its card: {RELEASED_FOLDER / CARD_FILE})", file=sys.stderr)
    return RELEASED_FOLDER


def check_outside(model_path: str | Path, folder: Path, option: str) -> None:
    """InputError when the model folder lies inside `folder`, or is it: the command writes there."""
    model_path, folder = Path(model_path).resolve(), folder.resolve()
    if folder == model_path or folder in model_path.parents:
        raise InputError(f"{folder}: {option} folder holds the model {model_path}, which writing there could "
                         f"replace; choose another {option} folder.")


def check_free(path: Path, overwrite: bool, option: str) -> None:
    """InputError when `path` is a non-empty folder (or a file) and --overwrite was not given."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: {option} must be a folder, found a file; choose another path.")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise InputError(f"{path}: {option} folder is not empty; choose a new folder or pass --overwrite.")


def run_predict(segmenter: Segmenter, args: argparse.Namespace) -> int:
    """Segment the inputs into --out; returns the exit status."""
    inputs, failures, ignored = find_inputs(args.inputs, args.out)
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if ignored:
        print(f"ignored {ignored} file(s) of unsupported type in the input folders", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, read_failures = segment_files(segmenter, inputs, args.out, args.axis)
    failures += read_failures
    write_csv(args.out / "summary.csv", SUMMARY_COLUMNS, rows)
    if failures:
        write_csv(args.out / "failures.csv", ("input", "reason"),
                  [{"input": str(path), "reason": reason} for path, reason in failures])
    else:  # an --overwrite rerun: the failures of an earlier run are not this run's
        (args.out / "failures.csv").unlink(missing_ok=True)
    print(f"{len(rows)} slice(s) from {len(inputs) - len(read_failures)} file(s) written to {args.out}; "
          f"{len(failures)} input(s) failed (threshold {segmenter.choices.threshold:g})")
    print(review_line(rows, segmenter.choices.confidence))
    return EXIT_INPUT_FAILED if failures else EXIT_OK


def review_line(rows: list[dict[str, object]], model: ConfidenceModel) -> str:
    """How many slices were flagged for review, and by what rule."""
    flagged = sum(bool(row["review"]) for row in rows)
    if not model.fitted:
        return (f"{flagged} slice(s) flagged for review (column review of summary.csv); the confidence score is "
                "not fitted (evaluate's validation had no poor slice, or the threshold was given without evaluate's "
                "choices): rank by it, do not trust the flag.")
    return (f"{flagged} of {len(rows)} slice(s) flagged for review: confidence at most "
            f"{model.review_threshold:.3g}, set on validation to flag at least {CATCH:.0%} of the poor slices (Dice < {POOR_DICE:g}; column "
            "review of summary.csv)")


def run_export(segmenter: Segmenter, folder: Path, args: argparse.Namespace) -> None:
    """SavedModel, TFLite and ONNX files into --export DIR, a model folder itself (its model.onnx runs with
    Segmenter.load and predict --model), then a check that they agree with Keras."""
    contract = {
        "input": f"float32 (N, {segmenter.size}, {segmenter.size}, 1) in [0, 1] from "
                 f"tumorseg.data.preprocess.preprocess_image, as {PREPROCESSING_FILE} says",
        "output": "tumour probability, float32 (N, S, S, 1)" if not segmenter.has_type_head else
                  "mask: tumour probability, float32 (N, S, S, 1); tumor_type: probabilities of "
                  + ", ".join(LABEL_NAMES.values()) + ", float32 (N, 3)",
        "masks": f"threshold, post-processing and TTA of {CHOICES_FILE} (tumorseg.evaluate.choices.Choices.masks)",
        "confidence": f"the confidence model of {CHOICES_FILE}: sigmoid(bias + sum of weights[feature] * feature) on "
                      "the (S, S) probability map; review when at most review_threshold. The features: "
                      + ", ".join(FEATURES) + "; agreement needs a second pass on the mirrored slice (tta hflip).",
    }
    preprocessing = replace(Preprocessing.load(folder / PREPROCESSING_FILE),
                            normalize_percentile=segmenter.percentile)
    with atomic_entries(args.export) as tmp:  # --overwrite replaces the export's own files, nothing else
        export.export_all(segmenter.model, tmp, contract, float16=args.float16)
        preprocessing.save(tmp / PREPROCESSING_FILE)
        segmenter.choices.save(tmp / CHOICES_FILE)  # with the options given, as predict would use them
    check = export.check_exports(segmenter.model, args.export, segmenter.size, segmenter.choices.threshold)
    print(f"exported to {args.export}; max |probability difference| to Keras on random inputs: "
          + ", ".join(f"{name} {value:.2g}" for name, value in check["max_difference"].items()))
    print(f"ONNX masks agree with Keras on {check['onnx_mask_agreement']:.4%} of pixels")
    if "float16_mask_agreement" in check:
        print(f"float16 TFLite masks agree with Keras on {check['float16_mask_agreement']:.4%} of pixels")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = model_folder(args.model)
    if args.inputs:
        check_free(args.out, args.overwrite, "--out")
        check_outside(folder, args.out, "--out")
    if args.export is not None:
        check_free(args.export, args.overwrite, "--export")
        check_outside(folder, args.export, "--export")
        if not (folder / MODEL_FILE).exists() and (folder / ONNX_FILE).exists():
            raise InputError(f"{folder}: --export converts a Keras model ({MODEL_FILE}); this folder holds an "
                             f"export's {ONNX_FILE}. Give the trained model's folder ({DEFAULT_FOLDER}).")
    segmenter = Segmenter.load(folder, threshold=args.threshold, postprocess=args.postprocess, tta=args.tta,
                               percentile=args.percentile, batch_size=args.batch_size)
    if args.export is not None:
        run_export(segmenter, folder, args)
    return run_predict(segmenter, args) if args.inputs else EXIT_OK


def command() -> None:
    """The console script tumorseg-predict (pyproject.toml), same as python -m tumorseg.serve.predict."""
    run("predict", main)


if __name__ == "__main__":
    command()
