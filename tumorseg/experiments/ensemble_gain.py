"""What an ensemble gains over one of its members at equal data: a nested study on one official test fold.

    dvc exp run --queue -n nest-v1 -S split.fold=3 -S split.val_fold=0   # ... and val_fold 1, 2; dvc queue start
    python -m tumorseg.experiments.ensemble_gain nest-v1 nest-v2 nest-v3 --single rel-f4 --out gain.json

The members share split.fold, the outer test fold that none of them saw; each validates on another official
fold (split.val_fold) and trains on the rest, so all draw on the same pool of data. Each member is scored
on the test fold with its own choices (its choices.json: what one fold model ships); the ensemble with the
choices the release makes, on the members' out-of-fold validation slices (tumorseg.experiments.release).
The gain is the ensemble's per-slice Dice minus a member's, with a 95% patient-bootstrap interval (the
whole patient resampled, as evaluate's intervals), against each member and against the members' mean.
`--single EXP` scores one more model on the same test fold with its own choices, e.g. one trained on the
whole pool (its validation drawn by split.val), to compare the ensemble with one model that saw it all.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tumorseg.atomic import write_json
from tumorseg.bundle import CHOICES_FILE, MODEL_FILE
from tumorseg.cli import program_name, run
from tumorseg.errors import InputError
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.metrics import bootstrap_ci
from tumorseg.experiments.release import (
    Member,
    check_one_run,
    check_same_data,
    ensemble_choices,
    genuine_ids,
    positions_of,
    predict_time,
    read_data,
    read_member,
    scored_test,
    scores_of,
)

MODULE = "tumorseg.experiments.ensemble_gain"
RESAMPLES = 2000
SCOPES = ("overall", "meningioma", "glioma", "pituitary")


def check_nested(members: list[Member], single: Member | None) -> None:
    """InputError unless the members are one nested study (one test fold, a validation fold each), `single`
    (if given) has their test fold and data, and every one ran evaluate (its choices.json)."""
    if any(member.params.split.val_fold is None for member in members):
        raise InputError("give the experiments of a nested study: each with split.val_fold set "
                         "(e.g. -S split.fold=3 -S split.val_fold=0,1,2).")
    check_one_run(members, varying="val_fold")
    if single is not None:
        if single.params.split.fold != members[0].params.split.fold:
            raise InputError(f"{single.name} tests on split.fold {single.params.split.fold}, the members on "
                             f"{members[0].params.split.fold}: give a model of the same test fold.")
        check_same_data(single, members[0])
    for member in [*members, *([single] if single else [])]:
        if not (member.folder / CHOICES_FILE).is_file():
            raise InputError(f"{member.name}: no {CHOICES_FILE} in its model folder (its evaluate stage did not "
                             "run): give experiments that ran the whole pipeline.")


def gains(ensemble: pd.DataFrame, member_tables: dict[str, pd.DataFrame], seed: int) -> dict[str, dict]:
    """The ensemble's mean per-slice Dice gain over each member and over the members' mean, per class and
    for genuine slices, with patient-bootstrap 95% intervals (a scope without slices is left out). The tables
    list the same slices in one order."""
    versus = {name: table["dice"].to_numpy() for name, table in member_tables.items()}
    versus["members' mean"] = np.mean(list(versus.values()), axis=0)
    result = {}
    for name, dice in versus.items():
        difference = ensemble["dice"].to_numpy() - dice
        rows = {}
        for scope in SCOPES:
            for genuine_only in (False, True):
                keep = (ensemble["class"] == scope) | (scope == "overall")
                keep &= ensemble["genuine"] | (not genuine_only)
                keep = keep.to_numpy()
                if not keep.any():
                    continue  # no such slice on this test fold
                low, high = bootstrap_ci(difference[keep], ensemble["pid"].to_numpy()[keep], RESAMPLES, seed)
                rows[f"{'genuine_' if genuine_only else ''}{scope}"] = {
                    "gain": float(difference[keep].mean()), "ci_low": low, "ci_high": high, "n": int(keep.sum())}
        result[name] = rows
    return result


def measure(names: list[str], single_name: str | None) -> dict:
    """Read the members (and the single model), score them and the ensemble on the shared test fold."""
    from tumorseg.model.ensemble import ensemble
    from tumorseg.model.load import load_model

    if len(names) < 2:
        raise InputError("give the experiments of a nested study, at least two.")
    with tempfile.TemporaryDirectory(prefix="ensemble-gain-") as scratch:
        scratch = Path(scratch)
        members = sorted((read_member(name, scratch) for name in names), key=lambda m: m.params.split.val_fold)
        single = read_member(single_name, scratch) if single_name else None
        check_nested(members, single)
        test_fold = members[0].params.split.fold
        print(f"members: {', '.join(f'{m.name} (validation fold {m.params.split.val_fold + 1})' for m in members)}; "
              f"test fold {test_fold + 1}")
        arrays, raw_dir = read_data(members, scratch)
        models = [load_model(member.folder / MODEL_FILE) for member in members]
        test = positions_of(members[0].split, np.asarray(arrays["ids"]), "test")
        genuine = genuine_ids(members[0])

        scored = list(zip(members, models)) + ([(single, load_model(single.folder / MODEL_FILE))] if single else [])
        tables = {member.name: scored_test(model, test, arrays, raw_dir, Choices.load(member.folder / CHOICES_FILE),
                                           genuine)
                  for member, model in scored}
        chosen, chosen_on, _ = ensemble_choices(members, models, arrays)
        combined = ensemble(models)
        ensemble_table = scored_test(combined, test, arrays, raw_dir, chosen, genuine)
        member_tables = {member.name: tables[member.name] for member in members}
        summary = {
            "test_fold": test_fold + 1, "test_slices": len(test),
            "test_patients": int(ensemble_table["pid"].nunique()), "genuine_known": genuine is not None,
            "members": [{"experiment": m.name, "rev": m.rev, "val_fold": m.params.split.val_fold + 1}
                        for m in members],
            "single": None if single is None else {"experiment": single.name, "rev": single.rev},
            "ensemble_choices": {"threshold": chosen.threshold, "postprocess": str(chosen.postprocess),
                                 "chosen_on": chosen_on},
            "scores": {"ensemble": scores_of(ensemble_table, genuine is not None),
                       **{name: scores_of(table, genuine is not None) for name, table in tables.items()}},
            "gain": gains(ensemble_table, member_tables, members[0].params.seed),
            "predict_seconds_per_slice": {"member": predict_time(models[0], arrays["images"], chosen.tta),
                                          "ensemble": predict_time(combined, arrays["images"], chosen.tta)},
        }
        if single is not None:
            summary["gain_over_single"] = gains(ensemble_table, {single.name: tables[single.name]},
                                                members[0].params.seed)[single.name]
    return summary


def report(summary: dict) -> str:
    """The figures as printable tables: mean Dice (failures) per scope and model, then the ensemble's gains."""
    scopes = [*SCOPES, *(f"genuine_{scope}" for scope in SCOPES if summary["genuine_known"])]
    models = summary["scores"]
    lines = [f"test fold {summary['test_fold']}: {summary['test_slices']} slices, {summary['test_patients']} "
             "patients; mean Dice per slice (slices below 0.1)",
             f"{'':<20}" + "".join(f"{name:>16}" for name in models)]
    for scope in scopes:
        lines.append(f"{scope:<20}" + "".join(f"{scores[f'{scope}_dice']:>10.4f} ({scores[f'{scope}_failures']:>3})"
                                              for scores in models.values()))
    versus = {"members' mean": summary["gain"]["members' mean"]}
    if summary.get("single"):
        versus[summary["single"]["experiment"]] = summary["gain_over_single"]
    lines += ["", "the ensemble's gain in Dice over [95% patient-bootstrap interval]",
              f"{'':<20}" + "".join(f"{name:>28}" for name in versus)]
    for scope in scopes:
        lines.append(f"{scope:<20}" + "".join(
            f"{rows[scope]['gain']:>+12.4f} [{rows[scope]['ci_low']:+.4f}, {rows[scope]['ci_high']:+.4f}]"
            if scope in rows else f"{'no slices':>28}" for rows in versus.values()))
    seconds = summary["predict_seconds_per_slice"]
    lines.append(f"predict: {1000 * seconds['member']:.0f} ms/slice for one member, "
                 f"{1000 * seconds['ensemble']:.0f} ms/slice for the ensemble")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name(MODULE), description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", help="the DVC experiments (or commits) of one nested study")
    parser.add_argument("--single", help="one more model of the same test fold, scored beside (e.g. trained on all)")
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    summary = measure(args.experiments, args.single)
    print(report(summary))
    if args.out:
        write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    run("ensemble_gain", main)
