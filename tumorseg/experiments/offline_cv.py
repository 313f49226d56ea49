"""Cross-validation trained on another machine, offline, and scored here: the GPU recipe on the official folds.

A GPU machine without network that takes at most 64 MiB of files and runs for minutes cannot run the
pipeline, so the work is cut in three, each a subcommand (also the console script tumorseg-offline-cv):

    python -m tumorseg.experiments.offline_cv pack     # here: gpu_cv/ = the dev set packed + each fold's split + params
    bash benchmarks/gpu_session.sh                     # there: ... offline_cv train: every fold, $OUT/fold<k>.npz
    python -m tumorseg.experiments.offline_cv score --predictions DIR   # here: evaluate's scores per fold, the summary

pack converts the slices of --source at the recipe's size (recipes/gpu.yaml by default) with the project's
own conversion, packs them (tumorseg.data.packed: JPEG quality 95, about 45 MiB at 256x256) and writes the
split of each official fold present (split.scheme=cvind, split.fold=k, the split stage's code), so the
other machine needs neither the .mat files nor cvind.mat. train (run there by benchmarks/gpu_session.sh)
unpacks the slices, trains each fold with the train stage's code under KERAS_BACKEND=jax
(tumorseg.train.loop.train, DVCLive off: DVC is not installed there), several folds at once on the one
GPU, stops each fold at --deadline seconds (keeping its best epoch so far), and predicts its val and test
slices (the flips of evaluate.tta) into fold<k>.npz (tumorseg.evaluate.stored: uint8 probabilities, about
a 1/510 error). score converts the slices here again from the original files (no JPEG), and runs the
evaluate stage's own choosing and scoring (tumorseg.evaluate.report.evaluate_stored: threshold,
post-processing and confidence model on val, test scored, native-resolution Dice against the .mat files),
then the project's summary across the folds.

    python -m tumorseg.experiments.offline_cv pack --quick --work /tmp/gpu_cv_quick   # a dry run: 32x32, tiny model
    WORK=/tmp/gpu_cv_quick bash benchmarks/gpu_session.sh quick    # the other machine's part here (needs jax)
    python -m tumorseg.experiments.offline_cv score --work /tmp/gpu_cv_quick --predictions /tmp/gpu_cv_quick/out

Why predictions and not model files come back: the reference U-Net is 91 MB per fold in float32, above
the 16 MiB per file such a machine returns; the predictions of a fold are a few MiB.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tumorseg.cli import program_name, run
from tumorseg.config import load_params
from tumorseg.data import packed
from tumorseg.errors import InputError

FOLDS_SOURCE = Path("../shared/data/figshare-folds/mat")  # the real dev set beside the repository
WORK = Path("gpu_cv")  # git-ignored
MODULE = "tumorseg.experiments.offline_cv"
QUICK = {"data.image_size": 32, "model.filters": 4, "model.depth": 2, "train.epochs": 2, "train.batch_size": 32,
         "train.precision": "float32"}


def folds_present(source: Path) -> list[int]:
    """split.fold values (official fold - 1) of the folds that hold slices of `source`."""
    from tumorseg.data.convert import list_slices
    from tumorseg.data.cvind import CVIND, read_cvind

    folds = read_cvind(source / CVIND)
    return sorted({int(folds[index - 1]) - 1 for index, _ in list_slices(source)})


# ------------------------------------------------------------------------------------------------- pack


def pack(args) -> None:
    from tumorseg.data.arrays import load_arrays
    from tumorseg.data.convert import mat_to_numpy
    from tumorseg.data.cvind import CVIND, assign_official, read_cvind
    from tumorseg.data.split import patient_families, summary, write_split
    from tumorseg.experiments.recipe import load_recipe

    source, work = Path(args.source), Path(args.work)
    overrides = {**load_recipe(args.recipe), **(QUICK if args.quick else {})}
    params = load_params().replaced({**overrides, "split.scheme": "cvind"})
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(json.dumps(params.model_dump(), indent=1))  # JSON is YAML
    with tempfile.TemporaryDirectory() as tmp:
        numpy_dir = Path(tmp) / "numpy"
        mat_to_numpy(source, numpy_dir, params.data.image_size, params.data.normalize_percentile)
        size = packed.pack(numpy_dir, work / "data.npz", args.format, args.quality)
        arrays = load_arrays(numpy_dir)
        cvind = read_cvind(source / CVIND)
        for fold in folds_present(source):
            subsets, moved = assign_official(arrays["pids"], arrays["labels"], arrays["ids"], cvind, fold,
                                             params.split.val, params.seed, patient_families(arrays["pids"]),
                                             source / CVIND)
            table = write_split(arrays["ids"], arrays["pids"], arrays["labels"], subsets,
                                work / f"split-fold{fold}.csv")
            print(f"official fold {fold + 1} as test:\n{summary(table, moved)}")
    print(f"{work}: data.npz {size / 2**20:.1f} MiB ({args.format}"
          f"{f' quality {args.quality}' if args.format == 'jpeg' else ''}), "
          f"{params.data.image_size}x{params.data.image_size}, params.yaml, split-fold*.csv")


# ------------------------------------------------------------------------------------------- train (GPU)


def train(args) -> None:
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = args.folds or sorted(int(path.stem.removeprefix("split-fold")) for path in work.glob("split-fold*.csv"))
    scratch = Path(tempfile.mkdtemp(prefix="gpu_cv-"))
    started = time.monotonic()
    count = packed.unpack(work / "data.npz", scratch / "numpy")
    print(f"unpacked {count} slices in {time.monotonic() - started:.1f} s", flush=True)
    deadline = time.time() + args.deadline
    environment = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"),
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / max(1, args.parallel):.2f}"}
    running, results, log = [], {}, out / "train.log"
    with open(log, "w") as log_file:
        for fold in folds:
            while len(running) >= args.parallel:
                running = _reap(running, results)
            command = [sys.executable, "-m", MODULE, "train-fold", "--work", str(work), "--numpy", str(scratch / "numpy"),
                       "--fold", str(fold), "--out", str(out), "--deadline-at", str(deadline)]
            fold_log = open(scratch / f"fold{fold}.log", "w")
            running.append((fold, subprocess.Popen(command, env=environment, stdout=fold_log,
                                                   stderr=subprocess.STDOUT), fold_log))
        while running:
            running = _reap(running, results)
        for fold in folds:  # one log back instead of one per fold (the device returns 8 files at most)
            log_file.write(f"===== fold {fold}\n{(scratch / f'fold{fold}.log').read_text()[-20000:]}\n")
    summary = {"machine": platform.node(), "parallel": args.parallel, "wall_s": round(time.monotonic() - started, 1),
               "folds": {str(fold): _fold_result(out, fold, results[fold]) for fold in folds}}
    (out / "gpu_cv.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    shutil.rmtree(scratch, ignore_errors=True)
    if any(code != 0 for code in results.values()):
        from tumorseg.train.phases import TrainingError

        raise TrainingError(f"{log}: a fold failed; its log is there.")


def _reap(running, results):
    time.sleep(2)
    still = []
    for fold, process, fold_log in running:
        if process.poll() is None:
            still.append((fold, process, fold_log))
        else:
            fold_log.close()
            results[fold] = process.returncode
            print(f"fold {fold} ended with code {process.returncode}", flush=True)
    return still


def _fold_result(out, fold, code):
    path = out / f"fold{fold}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    path.unlink(missing_ok=True)
    return {"returncode": code, **result}


def train_fold(args) -> None:
    """One fold, in its own process (its own share of the GPU): train, then predict val and test."""
    import keras

    from tumorseg.data.arrays import load_arrays, read_split, subset_positions
    from tumorseg.evaluate.stored import save_predictions
    from tumorseg.model.probabilities import predict
    from tumorseg.train.callbacks import StopAtDeadline
    from tumorseg.train.loop import TrainPaths, train

    work, out, fold = Path(args.work), Path(args.out), args.fold
    params = load_params(work / "params.yaml").replaced({"split.fold": fold})
    split_csv = work / f"split-fold{fold}.csv"
    run_dir = Path(tempfile.mkdtemp(prefix=f"fold{fold}-"))
    paths = TrainPaths.under(run_dir, numpy_dir=args.numpy, split_csv=split_csv)
    stop = StopAtDeadline(time.monotonic() + args.deadline_at - time.time())
    started = time.monotonic()
    metrics = train(params, paths, extra_callbacks=[stop], dvclive=False)
    train_s = time.monotonic() - started

    model = keras.models.load_model(paths.model, compile=False)
    arrays = load_arrays(args.numpy)
    split = read_split(split_csv, subsets=("val", "test"))
    positions = {subset: subset_positions(split, arrays, subset, split_csv) for subset in ("val", "test")}
    started = time.monotonic()
    predictions = {subset: predict(model, arrays["images"], rows, 128, params.evaluate.tta)
                   for subset, rows in positions.items()}
    predict_s = time.monotonic() - started
    ids = {subset: np.asarray(arrays["ids"])[rows] for subset, rows in positions.items()}
    save_predictions(out / f"fold{fold}.npz", predictions, ids, params.evaluate.tta)
    train_rows = int((split["subset"] == "train").sum())
    result = {"train": metrics, "train_s": round(train_s, 1), "predict_s": round(predict_s, 1),
              "stopped_at_deadline": stop.stopped_at, "train_slices": train_rows,
              # compilation and validation included
              "train_slices_per_s": round(train_rows * metrics["epochs"] / train_s, 1),
              "backend": keras.backend.backend(), **device_summary()}
    (out / f"fold{fold}.json").write_text(json.dumps(result))
    print(json.dumps(result))


def device_summary() -> dict[str, object]:
    """The GPU trained on and its peak memory, or the CPU."""
    from tumorseg.train.devices import accelerator

    gpu = accelerator()
    if gpu is None:
        return {"device": platform.processor() or platform.machine()}
    return {"device": gpu[0], "peak_memory_mib": round(gpu[1])}


# -------------------------------------------------------------------------------------------------- score


def prediction_folds(folder: Path) -> list[int]:
    """The split.fold values of the fold<k>.npz in `folder`: k a plain number (fold0.npz, not fold00.npz),
    each once; InputError naming any other fold*.npz, or when there is none."""
    found = sorted(path.name for path in folder.glob("fold*.npz"))
    malformed = [name for name in found if not re.fullmatch(r"fold(0|[1-9][0-9]?)\.npz", name)]
    if malformed:
        raise InputError(f"{folder}: {malformed[0]} is not named fold<k>.npz (k = 0, 1, ... without leading zeros); "
                         "keep only the files that offline_cv train wrote.")
    if not found:
        raise InputError(f"{folder}: no fold<k>.npz; copy there the files that offline_cv train wrote to its "
                         "--out ($OUT of benchmarks/gpu_session.sh).")
    return sorted(int(name[4:-4]) for name in found)


def training_summary(path: Path) -> dict[str, dict[str, float]]:
    """{fold: {"train_s", "val_dice"}} from train's gpu_cv.json when it is there (else {}; NaN for a figure a
    failed fold did not record); InputError for a file that is not that JSON or holds an infinite or negative
    figure."""
    if not path.is_file():
        return {}
    fix = "copy the gpu_cv.json that offline_cv train wrote, or remove it (the scores do not need it)"
    try:
        folds = json.loads(path.read_text()).get("folds", {})
        summary = {str(fold): {"train_s": float(found.get("train_s", float("nan"))),
                               "val_dice": float(found.get("train", {}).get("val_dice", float("nan")))}
                   for fold, found in folds.items()}
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not the training summary of offline_cv train ({type(error).__name__}): "
                         f"{fix}.") from None
    for fold, found in summary.items():
        if any(np.isinf(value) or value < 0 for value in found.values()):  # NaN: not recorded (a failed fold)
            raise InputError(f"{path}: fold {fold} has a negative or infinite figure: {fix}.")
    return summary


def score(args) -> None:
    from tumorseg.data.convert import mat_to_numpy
    from tumorseg.evaluate.report import EvaluatePaths, evaluate_stored
    from tumorseg.experiments.summarize import (
        METRIC_COLUMNS,
        format_report,
        plot_summary,
        summary_table,
        write_csv,
    )

    source, work, predictions, out = Path(args.source), Path(args.work), Path(args.predictions), Path(args.out)
    params = load_params(work / "params.yaml")
    run = training_summary(predictions / "gpu_cv.json")
    folds = prediction_folds(predictions)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        numpy_dir = Path(tmp) / "numpy"
        mat_to_numpy(source, numpy_dir, params.data.image_size, params.data.normalize_percentile)
        for fold in folds:
            fold_out = out / f"fold{fold}"
            result = evaluate_stored(predictions / f"fold{fold}.npz", params.replaced({"split.fold": fold}),
                                     EvaluatePaths.under(fold_out, numpy_dir, work / f"split-fold{fold}.csv", source))
            trained = run.get(str(fold), {})
            rows.append({"name": f"fold{fold}", "split.fold": fold,
                         **{key: result.get(key) for key in METRIC_COLUMNS},
                         "train_minutes": round(trained.get("train_s", float("nan")) / 60, 2),
                         "val_dice": trained.get("val_dice")})
    import pandas as pd

    table = pd.DataFrame(rows)
    summary = summary_table(table)
    print(format_report(table, summary))
    write_csv(table, out / "folds.csv")
    write_csv(summary, out / "summary.csv")
    plot_summary(table, summary, out / "summary.png")
    print(f"wrote {out}/fold<k>/ (choices.json, eval.json, eval_details.json, plots/), folds.csv, summary.csv, summary.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name(MODULE), description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="here: pack the dev set, each fold's split and the params into --work")
    p.add_argument("--source", default=str(FOLDS_SOURCE), help="folder of N.mat files and cvind.mat")
    p.add_argument("--recipe", default="gpu", help="recipe applied to params.yaml (default: recipes/gpu.yaml)")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--format", choices=packed.FORMATS, default="jpeg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--quick", action="store_true", help="a dry run: 32x32 slices, a tiny model, 2 epochs")
    t = commands.add_parser("train", help="on the GPU machine: train and predict every fold of --work")
    t.add_argument("--work", default=str(WORK))
    t.add_argument("--out", default=os.environ.get("OUT", str(WORK / "out")))
    t.add_argument("--folds", type=int, nargs="*", help="split.fold values (default: every split-fold<k>.csv)")
    t.add_argument("--parallel", type=int, default=4, help="folds trained at once on the one GPU")
    t.add_argument("--deadline", type=float, default=420.0,
                   help="seconds from the start after which each fold ends its training (its best epoch is kept)")
    f = commands.add_parser("train-fold", help=argparse.SUPPRESS)
    for name in ("--work", "--numpy", "--out"):
        f.add_argument(name, required=True)
    f.add_argument("--fold", type=int, required=True)
    f.add_argument("--deadline-at", type=float, required=True)
    s = commands.add_parser("score", help="here: score the predictions brought back with the evaluate stage's code")
    s.add_argument("--source", default=str(FOLDS_SOURCE))
    s.add_argument("--work", default=str(WORK))
    s.add_argument("--predictions", required=True, help="folder of the fold<k>.npz and gpu_cv.json brought back")
    s.add_argument("--out", default=str(WORK / "scores"))
    args = parser.parse_args(argv)
    {"pack": pack, "train": train, "train-fold": train_fold, "score": score}[args.command](args)
    return 0


def command() -> None:
    """The console script tumorseg-offline-cv (pyproject.toml), same as python -m tumorseg.experiments.offline_cv."""
    run("offline_cv", main)


if __name__ == "__main__":
    command()
