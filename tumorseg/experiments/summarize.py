"""Summarise a cross-validation study, or any set of DVC experiments: test Dice and IoU across them.

    python -m tumorseg.experiments.summarize                       # every finished experiment of the HEAD baseline
    python -m tumorseg.experiments.summarize --exps fold0 fold1    # the named ones (names or commit SHAs)
    python -m tumorseg.experiments.summarize --json exps.json      # from a saved `dvc exp show --json`

For each experiment it takes the test Dice and IoU, overall and per class, from
metrics/eval.json and the parameters whose values differ between the experiments
(split.fold in a CV study). It prints one row per experiment and the mean and
sample standard deviation (n - 1) across them, and writes a bar chart with error
bars and each experiment's point (--out), the summary as CSV (--csv) and the
per-experiment rows as CSV (--experiments-csv).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_file
from tumorseg.cli import program_name, run
from tumorseg.errors import ProjectError

METRICS_FILE = "metrics/eval.json"
PARAMS_FILE = "params.yaml"
SCORES = ("dice", "iou", "failures")  # failures: test slices with Dice below 0.1
SCORE_LABELS = {"dice": "Dice", "iou": "IoU", "failures": "failures"}
SCOPES = ("overall", *LABEL_NAMES.values())
UNFINISHED = {"queued": "is still queued", "running": "is still running", "failed": "failed"}


class SummaryError(ProjectError):
    """The experiments cannot be summarised; the message says why and what to do."""


def metric_key(scope: str, score: str) -> str:
    """The key of a score in metrics/eval.json: `dice` overall, `glioma_dice` per class."""
    return score if scope == "overall" else f"{scope}_{score}"


CI_COLUMNS = ("dice_ci_low", "dice_ci_high")  # each experiment's patient-bootstrap 95% CI of test Dice
METRIC_COLUMNS = [metric_key(scope, score) for scope in SCOPES for score in SCORES] + list(CI_COLUMNS)
PRINTED_COLUMNS = ["dice", *CI_COLUMNS, "iou", "failures",
                   *(metric_key(scope, score) for scope in SCOPES[1:] for score in ("dice", "failures"))]


def load_exp_show(json_path: str | Path | None = None, all_commits: bool = False,
                  cwd: str | Path = ".") -> list[dict[str, Any]]:
    """The parsed output of `dvc exp show --json`: read from `json_path`, or run in `cwd`."""
    if json_path is not None:
        try:
            text = Path(json_path).read_text()
        except OSError as error:
            raise SummaryError(f"cannot read {json_path}: {error.strerror}.") from error
        source = str(json_path)
    else:
        command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        if result.returncode:
            raise SummaryError(
                f"`dvc exp show --json` failed:\n{result.stderr.strip()}\n"
                "Run this command inside the DVC project, or pass a saved output with --json FILE."
            )
        text, source = result.stdout, "`dvc exp show --json`"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SummaryError(f"{source} is not JSON ({error}); save it with `dvc exp show --json > FILE`.") from error
    if not isinstance(data, list):
        raise SummaryError(
            f"{source} is not the output of `dvc exp show --json` of DVC 3 (expected a list of commits, "
            f"found a {type(data).__name__})."
        )
    return data


def list_entries(exp_show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten `dvc exp show --json` into one dict per row: workspace, baseline commits, experiments.

    Each dict has name, rev, kind (workspace | commit | experiment), baseline (the commit's name or
    rev), state (success | queued | running | failed) and data (params and metrics).
    """
    entries = []
    for commit in exp_show:
        kind = "workspace" if commit.get("rev") == "workspace" else "commit"
        baseline = commit.get("name") or commit.get("rev")
        entries.append(_entry(commit, kind, baseline, "failed" if commit.get("error") else "success"))
        for experiment in commit.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state") or "success"
            for rev in experiment.get("revs") or []:
                rev_state = "failed" if rev.get("error") and state == "success" else state
                entries.append(_entry(rev, "experiment", baseline, rev_state, experiment.get("name")))
    return entries


def _entry(node, kind, baseline, state, name=None):
    rev = node.get("rev") or ""
    return {
        "name": node.get("name") or name or (rev if kind == "workspace" else rev[:7]),
        "rev": rev,
        "kind": kind,
        "baseline": baseline,
        "state": state,
        "data": node.get("data") or {},
    }


def select_entries(entries: list[dict[str, Any]], names: list[str] | None = None) -> list[dict[str, Any]]:
    """The entries to summarise.

    Without `names`: every finished experiment (of every baseline commit in the JSON; by default
    `dvc exp show` lists only HEAD's). With `names`: the experiments or commits with those names
    or SHAs (a prefix of at least 7 characters), which must be finished.
    """
    if not names:
        chosen = [e for e in entries if e["kind"] == "experiment" and e["state"] not in UNFINISHED]
        skipped = [e for e in entries if e["kind"] == "experiment" and e["state"] in UNFINISHED]
        for entry in skipped:
            print(f"note: skipping experiment {entry['name']} ({entry['state']})", file=sys.stderr)
        if not chosen:
            raise SummaryError(
                "no finished experiment found. Run some first, e.g. `dvc exp run --queue -S split.fold=0,1,2,3,4` "
                "then `dvc queue start`, or name commits or experiments with --exps."
            )
        return chosen
    chosen = []
    for name in names:
        matches = [e for e in entries if _matches(e, name)]
        if not matches:
            available = ", ".join(e["name"] for e in entries)
            raise SummaryError(f"no experiment or commit named {name!r}; available: {available}.")
        if len(matches) > 1 and len({e["rev"] for e in matches}) > 1:
            revs = ", ".join(f"{e['name']} ({e['rev'][:7]})" for e in matches)
            raise SummaryError(f"{name!r} matches several experiments: {revs}; give a longer SHA.")
        entry = matches[0]
        if entry["state"] in UNFINISHED:
            raise SummaryError(f"experiment {name!r} {UNFINISHED[entry['state']]}: it has no results to summarise.")
        if entry not in chosen:
            chosen.append(entry)
    return chosen


def _matches(entry, name):
    return entry["name"] == name or (len(name) >= 7 and entry["rev"].startswith(name))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'split': {'fold': 0}} -> {'split.fold': 0}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def entry_params(entry: dict[str, Any]) -> dict[str, Any]:
    """Flat params of an entry; keys of files other than params.yaml are prefixed with `file:`."""
    params = {}
    for filename, content in (entry["data"].get("params") or {}).items():
        prefix = "" if filename == PARAMS_FILE else f"{filename}:"
        params.update(flatten((content or {}).get("data") or {}, prefix))
    return params


def entry_metrics(entry: dict[str, Any], metrics_file: str = METRICS_FILE) -> dict[str, float]:
    """Test Dice, IoU and failures, overall and per class, and the CI of test Dice (the headline of
    metrics/eval.json), of an entry (NaN where a class had no test slice or an older evaluate did not write the key)."""
    found = (entry["data"].get("metrics") or {}).get(metrics_file) or {}
    values = found.get("data")
    if not values:
        reason = (found.get("error") or {}).get("msg") or "missing"
        raise SummaryError(
            f"experiment {entry['name']} has no {metrics_file} ({reason}); did its evaluate stage run? "
            "Leave it out with --exps."
        )
    if not isinstance(values, dict) or "dice" not in values or "iou" not in values:
        raise SummaryError(f"{metrics_file} of {entry['name']} has no 'dice'/'iou': is it the evaluate stage's output?")
    found = {}
    for key in METRIC_COLUMNS:
        value = values.get(key)
        if value is None:  # a class without test slices, or a key an older evaluate did not write
            found[key] = np.nan
            continue
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan
        if not np.isfinite(number):
            raise SummaryError(f"{metrics_file} of {entry['name']}: {key} is not a finite number; re-run its evaluate "
                               "stage or leave it out with --exps.")
        found[key] = number
    return found


def varying_params(params_per_entry: list[dict[str, Any]]) -> list[str]:
    """The parameter keys whose values are not the same in every entry, in first-seen order."""
    keys = list(dict.fromkeys(key for params in params_per_entry for key in params))
    return [
        key for key in keys
        if len({json.dumps(params.get(key), sort_keys=True) for params in params_per_entry}) > 1
    ]


def experiment_table(entries: list[dict[str, Any]], metrics_file: str = METRICS_FILE) -> pd.DataFrame:
    """One row per entry: name, rev, the params that differ between entries, then the metrics."""
    params = [entry_params(entry) for entry in entries]
    varying = varying_params(params)
    rows = []
    for entry, entry_param in zip(entries, params):
        row = {"name": entry["name"], "rev": entry["rev"][:7]}
        row.update({key: entry_param.get(key) for key in varying})
        row.update(entry_metrics(entry, metrics_file))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["name", "rev", *varying, *METRIC_COLUMNS], dtype=object)
    table[METRIC_COLUMNS] = table[METRIC_COLUMNS].astype(float)
    return _sorted(table, varying)


def _sorted(table, varying):
    """Rows ordered by the varying params (e.g. split.fold), then name; by name where values do not compare."""
    try:
        return table.sort_values([*varying, "name"], na_position="last", kind="stable").reset_index(drop=True)
    except TypeError:
        return table.sort_values("name", kind="stable").reset_index(drop=True)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample SD (n - 1) of each score per scope (overall and each class) across the rows."""
    rows = []
    for scope in SCOPES:
        row = {"scope": scope}
        for score in SCORES:
            values = table[metric_key(scope, score)]
            row[f"{score}_mean"] = values.mean()
            row[f"{score}_std"] = values.std(ddof=1)
        row["n"] = int(table[metric_key(scope, "dice")].notna().sum())
        rows.append(row)
    columns = [f"{score}_{stat}" for score in SCORES for stat in ("mean", "std")]
    return pd.DataFrame(rows, columns=["scope", *columns, "n"])


def format_report(table: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The printed report: per-experiment rows, then mean ± SD per scope."""
    params = [column for column in table.columns if column not in METRIC_COLUMNS and column not in ("name", "rev")]
    shown = table.set_index("name")[params + PRINTED_COLUMNS]
    shown[params] = shown[params].map(_param_text)
    lines = [
        f"test Dice and IoU of {len(table)} experiment(s) ({METRICS_FILE}; failures: slices with Dice < 0.1; "
        "dice_ci: patient-bootstrap 95% interval):",
        shown.to_string(float_format=lambda v: f"{v:.4f}", na_rep="n/a"),
        "",
        "mean and standard deviation (n - 1) across experiments:",
    ]
    for row in summary.itertuples(index=False):
        lines.append(
            f"  {row.scope:<11} Dice {_mean_sd(row.dice_mean, row.dice_std)}"
            f"  IoU {_mean_sd(row.iou_mean, row.iou_std)}  n={row.n}"
            f"  failures {_mean_sd(row.failures_mean, row.failures_std, 1)}"
        )
    if len(table) < 2:
        lines.append("  (one experiment: no standard deviation)")
    return "\n".join(lines)


def _param_text(value):
    return "null" if value is None else str(value)


def _mean_sd(mean, sd, decimals=4):
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{decimals}f} ± {'n/a' if np.isnan(sd) else f'{sd:.{decimals}f}'}"


def plot_summary(table: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """Bar chart of mean Dice and IoU per scope with SD error bars and each experiment as a point."""
    figure = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = np.arange(len(SCOPES))
    width = 0.38
    rng = np.random.default_rng(0)
    for offset, score, colour in ((-width / 2, "dice", "tab:blue"), (width / 2, "iou", "tab:orange")):
        means = summary[f"{score}_mean"].to_numpy(dtype=float)
        sds = np.nan_to_num(summary[f"{score}_std"].to_numpy(dtype=float))
        axes.bar(x + offset, np.nan_to_num(means), width, yerr=sds, capsize=4, color=colour, alpha=0.75,
                 label=f"{SCORE_LABELS[score]} (mean ± SD)")
        for i, scope in enumerate(SCOPES):
            points = table[metric_key(scope, score)].dropna().to_numpy()
            jitter = rng.uniform(-width / 6, width / 6, len(points))
            axes.scatter(np.full(len(points), x[i] + offset) + jitter, points, s=14, color="black", zorder=3,
                         label="one experiment" if (i == 0 and score == "dice") else None)
    axes.set_xticks(x, SCOPES)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("test score")
    axes.set_title(f"Test Dice and IoU across {len(table)} experiment(s)")
    axes.legend(loc="upper right", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png")


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)


def summarize(exp_show: list[dict[str, Any]], names: list[str] | None = None,
              out: str | Path = "plots/cv_summary.png", csv: str | Path = "plots/cv_summary.csv",
              experiments_csv: str | Path = "plots/cv_experiments.csv",
              metrics_file: str = METRICS_FILE) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Summarise the selected experiments of a parsed `dvc exp show --json`; return (table, summary, report)."""
    try:
        listed = list_entries(exp_show)
    except (AttributeError, TypeError) as error:  # a node that is not the mapping dvc writes
        raise SummaryError(f"not the output of `dvc exp show --json` ({error}); save it again with "
                           "`dvc exp show --json > FILE`.") from None
    entries = select_entries(listed, names)
    table = experiment_table(entries, metrics_file)
    summary = summary_table(table)
    plot_summary(table, summary, out)
    write_csv(summary.round(6), csv)
    write_csv(table, experiments_csv)
    return table, summary, format_report(table, summary)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("tumorseg.experiments.summarize"),
        description="Mean and standard deviation of test Dice and IoU (overall and per class) across DVC "
                    "experiments, e.g. the folds of a cross-validation study.",
    )
    parser.add_argument("--exps", nargs="+", metavar="NAME",
                        help="experiments or commits to summarise, by name or SHA (default: every finished "
                             "experiment of the HEAD baseline, or of every commit in --json FILE)")
    parser.add_argument("--json", metavar="FILE", help="a saved `dvc exp show --json` output (default: run it)")
    parser.add_argument("-A", "--all-commits", action="store_true",
                        help="run `dvc exp show --json --all-commits`: experiments of every commit")
    parser.add_argument("--out", default="plots/cv_summary.png", help="plot to write (PNG)")
    parser.add_argument("--csv", default="plots/cv_summary.csv", help="summary CSV: mean and SD per scope")
    parser.add_argument("--experiments-csv", default="plots/cv_experiments.csv",
                        help="per-experiment CSV: varying params and metrics")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp_show = load_exp_show(args.json, args.all_commits)
    _, _, report = summarize(exp_show, args.exps, args.out, args.csv, args.experiments_csv)
    print(report)
    print(f"\nwrote {args.out}, {args.csv}, {args.experiments_csv}")
    return 0


def command() -> None:
    """The console script tumorseg-summarize (pyproject.toml), same as python -m tumorseg.experiments.summarize."""
    run("summarize", main)


if __name__ == "__main__":
    command()
