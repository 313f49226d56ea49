"""render_samples stage: test predictions per class -> plots/samples/ (threshold from metrics/eval.json)"""

import json
from pathlib import Path

from tumorseg.data import InputError
from tumorseg.params import load_params
from tumorseg.render import render_samples

METRICS = Path("metrics/eval.json")


def main():
    params = load_params()
    threshold = json.loads(METRICS.read_text()).get("threshold") if METRICS.is_file() else None
    try:
        render_samples("models/model.keras", "data/numpy", "data/split.csv", params, "plots/samples", threshold)
    except InputError as error:
        raise SystemExit(f"render_samples: {error}") from error


if __name__ == "__main__":
    main()
