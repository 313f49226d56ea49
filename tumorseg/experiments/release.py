"""Release a model: the fold models of one cross-validation as one ensemble model folder, with its card.

    python -m tumorseg.experiments.release rel-f1 rel-f2 rel-f3 rel-f4     # -> models/released/
    python -m tumorseg.experiments.release fold1 fold2 --out /tmp/candidate

Each name is a DVC experiment (or a commit) of one cross-validation: the same params but split.fold. From
each, through DVC at its revision (nothing is checked out), it reads the model folder models/unet/, the
split data/split.csv, the converted slices data/numpy/ and the raw slices data/raw/. It writes a model
folder (tumorseg.bundle) whose model.keras averages the members (tumorseg.model.ensemble; weights stored as
float16), release.json with every figure below, and MODEL_CARD.md generated from it. Re-releasing after a
better recipe is the same command on that recipe's experiments.

How the ensemble's choices are made, and why. The threshold, post-processing and confidence model are chosen
as evaluate chooses them (tumorseg.evaluate.report.choose), on the members' own validation slices, each
predicted by the one member that held it out. Every such slice is predicted by a model that never trained on
it and none is a test slice; the ensemble itself is never run on them, because each was in the training set
of the other members, whose mean would flatter it (nnU-Net chooses its post-processing on out-of-fold
predictions for the same reason). The averaged probabilities are smoother than one member's, so the
threshold may be a little off its optimum for the ensemble; it is not biased by leaked slices.

The card's figures are each member on its own official test fold (out of fold, as the cross-validation
scored it) with the ensemble's choices: per class, for all slices and for the genuine ones (the dev set's
manifest.csv `origin`, when the source folder has one), the mean and standard deviation over the folds.
They estimate one member; the ensemble of all folds has no held-out dev fold left, so its own test figure
must come from data none of the members saw.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_dir, write_json
from tumorseg.bundle import (
    CARD_FILE,
    CHOICES_FILE,
    DEFAULT_FOLDER,
    MODEL_FILE,
    PREPROCESSING_FILE,
    RELEASED_FOLDER,
    Preprocessing,
)
from tumorseg.cli import program_name, run
from tumorseg.config import Params, load_yaml, parse_params
from tumorseg.errors import InputError
from tumorseg.evaluate import confidence, metrics
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.report import choose, native_dice, per_image_table
from tumorseg.experiments.model_card import render_card
from tumorseg.model.probabilities import DEFAULT_BATCH_SIZE, Predictions, predict

MODULE = "tumorseg.experiments.release"
RELEASE_FILE = "release.json"
MAX_RELEASE_BYTES = 16 * 2**20  # what the repository holds for a released model


@dataclass
class Member:
    """One fold model of the cross-validation, read at its revision."""

    name: str
    rev: str
    folder: Path  # its model folder, copied out of DVC
    params: Params
    split: pd.DataFrame
    numpy_digest: str  # of data/numpy in its dvc.lock: the members must share the slices


def experiment_revision(name: str) -> str:
    """The commit of DVC experiment `name` (or of a commit name or SHA); InputError naming the fix."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
                          capture_output=True, text=True).stdout.split("\n")
    found = {line.split()[0] for line in refs if line.endswith(f"/{name}")}
    if len(found) > 1:
        raise InputError(f"experiment name {name!r} is used by {len(found)} experiments; give its commit SHA "
                         "(dvc exp show --sha).")
    if found:
        return found.pop()
    commit = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode:
        raise InputError(f"{name}: neither a DVC experiment nor a commit here; list them with dvc exp show.")
    return commit.stdout.strip()


def read_member(name: str, scratch: Path) -> Member:
    """Member `name`'s model folder, params, split and slice digest, through DVC at its revision."""
    from dvc.api import DVCFileSystem

    rev = experiment_revision(name)
    fs = DVCFileSystem(".", rev=rev)
    for needed in (MODEL_FILE, PREPROCESSING_FILE):  # a member's own choices are not used: see the docstring
        if not fs.exists(f"{DEFAULT_FOLDER}/{needed}"):
            raise InputError(f"{name}: no {DEFAULT_FOLDER}/{needed} at {rev[:7]}; release experiments that trained "
                             "a model folder (this version of the pipeline).")
    folder = scratch / name
    fs.get(str(DEFAULT_FOLDER), str(folder), recursive=True)
    params = parse_params(load_yaml(fs.read_text("params.yaml")), f"{name}:params.yaml")
    with fs.open("data/split.csv") as split:
        table = pd.read_csv(split, dtype={"pid": str})
    locked = load_yaml(fs.read_text("dvc.lock"))
    digest = next(out["md5"] for out in locked["stages"]["mat_to_numpy"]["outs"] if out["path"] == "data/numpy")
    return Member(name, rev, folder, params, table, digest)


def check_one_run(members: list[Member], varying: str = "fold") -> None:
    """InputError unless the members are one study: the same params but split.`varying` (fold: a
    cross-validation; val_fold: a nested study), a distinct value each, the same slices."""
    def recipe(member):
        tree = member.params.model_dump()
        tree["split"].pop(varying)
        tree["data"].pop("source")  # the same folder may be named by two paths
        return tree

    first = recipe(members[0])
    for member in members[1:]:
        if recipe(member) != first:
            raise InputError(f"{member.name} and {members[0].name} differ in more than split.{varying}: give the "
                             "experiments of one study.")
        check_same_data(member, members[0])
    values = [getattr(member.params.split, varying) for member in members]
    if len(set(values)) < len(values):
        raise InputError(f"two members share split.{varying} ({values}): give one experiment per fold.")


def check_same_data(member: Member, first: Member) -> None:
    """InputError unless `member` was trained on the slices of `first` (data/numpy in their dvc.lock)."""
    if member.numpy_digest != first.numpy_digest:
        raise InputError(f"{member.name} and {first.name} were trained on different data/numpy.")


def read_data(members: list[Member], scratch: Path) -> tuple[dict, Path]:
    """(the converted slices, the raw slices' folder) the members share (check_one_run), through DVC."""
    from dvc.api import DVCFileSystem

    from tumorseg.data.arrays import load_arrays

    data = DVCFileSystem(".", rev=members[0].rev)
    data.get("data/numpy", str(scratch / "numpy"), recursive=True)
    data.get("data/raw", str(scratch / "raw"), recursive=True)
    return load_arrays(scratch / "numpy"), scratch / "raw"


def concatenated(parts: list[Predictions]) -> Predictions:
    types = None if parts[0].types is None else np.concatenate([part.types for part in parts])
    return Predictions(np.concatenate([part.probabilities for part in parts]), types,
                       np.concatenate([part.agreement for part in parts]))


def positions_of(split: pd.DataFrame, ids: np.ndarray, subset: str) -> np.ndarray:
    where = {int(slice_id): position for position, slice_id in enumerate(ids)}
    return np.array([where[int(i)] for i in split.loc[split["subset"] == subset, "index"]], dtype=int)


def genuine_ids(member: Member) -> set[int] | None:
    """Ids of the genuine slices when the source folder has the dev set's manifest.csv, else None."""
    source = Path(member.params.data.source)
    for manifest in (source / "manifest.csv", source.parent / "manifest.csv"):
        if manifest.is_file():
            table = pd.read_csv(manifest)
            return set(table.loc[table["origin"] == "genuine", "index"].astype(int))
    return None


def fold_scores(per_image: pd.DataFrame) -> dict[str, float]:
    """Mean Dice, native Dice, IoU and failures of a per-image table, overall and per class."""
    scores = {}
    for scope, part in [("overall", per_image), *((name, per_image[per_image["class"] == name])
                                                  for name in LABEL_NAMES.values())]:
        scores.update({f"{scope}_dice": part["dice"].mean(), f"{scope}_dice_native": part["dice_native"].mean(),
                       f"{scope}_iou": part["iou"].mean(), f"{scope}_n": len(part),
                       f"{scope}_failures": int((part["dice"] < metrics.FAILURE_DICE).sum())})
    return scores


def across_folds(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    table = pd.DataFrame(rows)
    return {key: {"mean": float(table[key].mean()), "sd": float(table[key].std(ddof=1))} for key in table.columns}


def predict_time(model, images: np.ndarray, tta: str, batch: int = 64) -> float:
    """Seconds per slice of model.predict on `batch` slices with `tta` (after a warm-up call)."""
    positions = np.arange(min(batch, len(images)))
    predict(model, images, positions, DEFAULT_BATCH_SIZE, tta)  # the same batch shapes: nothing left to trace
    started = time.perf_counter()
    predict(model, images, positions, DEFAULT_BATCH_SIZE, tta)
    return (time.perf_counter() - started) / len(positions)


def ensemble_choices(members: list[Member], models: list, arrays: dict) -> tuple[Choices, int, float]:
    """(choices, the number of slices they were chosen on, validation IoU): evaluate's choosing on the
    out-of-fold validation slices, each predicted by the member that held it out (see the module docstring)."""
    ids, tta = np.asarray(arrays["ids"]), members[0].params.evaluate.tta
    val = [positions_of(member.split, ids, "val") for member in members]
    predicted = concatenated([predict(model, arrays["images"], rows, DEFAULT_BATCH_SIZE, tta)
                              for model, rows in zip(models, val)])
    truth = np.asarray(arrays["masks"][np.concatenate(val)]) > 0
    chosen, val_iou, _ = choose(truth, predicted, members[0].params)
    print(f"chosen on {len(truth)} out-of-fold validation slices: threshold {chosen.threshold:g}, "
          f"post-processing {chosen.postprocess}, validation IoU {val_iou:.4f}")
    return chosen, len(truth), val_iou


def scored_test(model, rows: np.ndarray, arrays: dict, raw_dir: Path, chosen: Choices,
                genuine: set[int] | None) -> pd.DataFrame:
    """`model` on the slices at `rows` with `chosen`: evaluate's per-image table, with the confidence, the
    review flag and whether each slice is genuine (all are when `genuine` is None)."""
    ids = np.asarray(arrays["ids"])
    predicted = predict(model, arrays["images"], rows, DEFAULT_BATCH_SIZE, chosen.tta)
    pred, scores, _ = chosen.score(predicted)
    truth = np.asarray(arrays["masks"][rows]) > 0
    native = native_dice(predicted.probabilities, ids[rows], raw_dir, chosen)
    per_image = per_image_table(ids[rows], np.asarray(arrays["pids"])[rows], np.asarray(arrays["labels"])[rows],
                                truth, pred, native)
    return per_image.assign(confidence=scores, review=chosen.confidence.flags(scores),
                            genuine=per_image["index"].isin(genuine) if genuine is not None else True)


def scores_of(per_image: pd.DataFrame, genuine_known: bool) -> dict[str, float]:
    """fold_scores of all slices, and with genuine_ keys of the genuine ones when they are known."""
    scores = fold_scores(per_image)
    if genuine_known:
        scores.update({f"genuine_{key}": value for key, value in fold_scores(per_image[per_image["genuine"]]).items()})
    return scores


def out_of_fold_tests(members: list[Member], models: list, arrays: dict, raw_dir: Path,
                      chosen: Choices) -> tuple[list[dict], pd.DataFrame, float]:
    """Each member on its own test fold with `chosen`: (scores per fold, the per-image table of all folds, the
    mean Dice with the weights rounded to float16 as released)."""
    import keras

    ids = np.asarray(arrays["ids"])
    genuine = genuine_ids(members[0])
    rows, tables, half_dice = [], [], []
    for member, model in zip(members, models):
        test = positions_of(member.split, ids, "test")
        per_image = scored_test(model, test, arrays, raw_dir, chosen, genuine)
        tables.append(per_image)
        rows.append({"fold": member.params.split.fold + 1, **scores_of(per_image, genuine is not None)})
        rounded = keras.models.clone_model(model)
        rounded.set_weights([weight.astype(np.float16).astype(weight.dtype) if weight.dtype == np.float32 else weight
                             for weight in model.get_weights()])
        truth = np.asarray(arrays["masks"][test]) > 0
        half_dice.append(metrics.dice_per_image(truth, chosen.masks(
            predict(rounded, arrays["images"], test, DEFAULT_BATCH_SIZE, chosen.tta).probabilities)))
    return rows, pd.concat(tables, ignore_index=True), float(np.concatenate(half_dice).mean())


def released_recipe(members: list[Member], preprocessing: Preprocessing) -> dict:
    """The params that shaped the members (`preprocessing` of the first), split.fold the list of their folds,
    the source by its name only."""
    recipe = dict(preprocessing.trained_with)
    recipe["split"] = {**recipe["split"], "fold": [member.params.split.fold for member in members]}
    recipe["data"] = {**recipe["data"], "source": Path(recipe["data"]["source"]).name}  # not a local path
    return recipe


def release(names: list[str], out: Path) -> dict:
    """Read the members, choose, score, and write the released model folder `out`; returns release.json."""
    from tumorseg.model.ensemble import ensemble, save_half_precision
    from tumorseg.model.load import load_model

    if len(names) < 2:
        raise InputError("give the experiments of a cross-validation, at least two.")
    with tempfile.TemporaryDirectory(prefix="release-") as scratch:
        scratch = Path(scratch)
        members = sorted((read_member(name, scratch) for name in names), key=lambda m: m.params.split.fold)
        check_one_run(members)
        print("members: " + ", ".join(f"{m.name} (test fold {m.params.split.fold + 1}, {m.rev[:7]})" for m in members))
        arrays, raw_dir = read_data(members, scratch)
        models = [load_model(member.folder / MODEL_FILE) for member in members]

        chosen, chosen_on, val_iou = ensemble_choices(members, models, arrays)
        rows, pooled, float16_dice = out_of_fold_tests(members, models, arrays, raw_dir, chosen)
        combined = ensemble(models)
        tta = members[0].params.evaluate.tta
        seconds = {"member": predict_time(models[0], arrays["images"], tta),
                   "ensemble": predict_time(combined, arrays["images"], tta)}
        preprocessing = Preprocessing.load(members[0].folder / PREPROCESSING_FILE)
        recipe = released_recipe(members, preprocessing)
        with atomic_dir(out) as tmp:
            save_half_precision(combined, tmp / MODEL_FILE)
            replace(preprocessing, trained_with=recipe).save(tmp / PREPROCESSING_FILE)
            chosen.save(tmp / CHOICES_FILE)
            summary = {
                "members": [{"experiment": m.name, "rev": m.rev, "test_fold": m.params.split.fold + 1} for m in members],
                "image_size": preprocessing.image_size, "normalize_percentile": preprocessing.normalize_percentile,
                "classes": list(preprocessing.classes), "classify": members[0].params.model.classify,
                "official_folds": members[0].params.split.scheme == "cvind", "recipe": recipe,
                "choices": {"threshold": chosen.threshold, "postprocess": str(chosen.postprocess), "tta": chosen.tta,
                            "chosen_on": chosen_on, "val_iou": val_iou},
                "folds": rows, "across_folds": across_folds(rows),
                "confidence": confidence.referral_metrics(pooled["confidence"], pooled["dice"], pooled["review"]),
                "test_slices": len(pooled), "test_patients": int(pooled["pid"].nunique()),
                "genuine_known": bool(rows and "genuine_overall_dice" in rows[0]),
                "float16": {"dice_float32": float(pooled["dice"].mean()), "dice_float16": float16_dice},
                "predict_seconds_per_slice": seconds,
                "model_bytes": (tmp / MODEL_FILE).stat().st_size,
            }
            write_json(tmp / RELEASE_FILE, summary)
            (tmp / CARD_FILE).write_text(render_card(summary))
    if summary["model_bytes"] > MAX_RELEASE_BYTES:
        print(f"warning: {out / MODEL_FILE} is {summary['model_bytes'] / 2**20:.1f} MiB, above the "
              f"{MAX_RELEASE_BYTES / 2**20:.0f} MiB the repository holds for a release", file=sys.stderr)
    print(f"released {len(members)} members to {out} ({summary['model_bytes'] / 2**20:.1f} MiB); out-of-fold test "
          f"Dice {summary['float16']['dice_float32']:.4f} (float16 weights: {float16_dice:.4f}); card: {out / CARD_FILE}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name(MODULE), description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", help="the DVC experiments (or commits) of one cross-validation")
    parser.add_argument("--out", type=Path, default=RELEASED_FOLDER, help="model folder to write (default: %(default)s)")
    args = parser.parse_args(argv)
    release(args.experiments, args.out)
    return 0


def command() -> None:
    """The console script tumorseg-release (pyproject.toml), same as python -m tumorseg.experiments.release."""
    run("release", main)


if __name__ == "__main__":
    command()
