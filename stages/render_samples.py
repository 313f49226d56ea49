"""render_samples stage: test predictions per class -> plots/samples/ (as evaluate chose: metrics/eval.json)"""

import json
from pathlib import Path

from tumorseg.data import InputError
from tumorseg.params import load_params
from tumorseg.postprocess import PostProcess
from tumorseg.render import render_samples

METRICS = Path("metrics/eval.json")


def main():
    params = load_params()
    chosen = json.loads(METRICS.read_text()) if METRICS.is_file() else {}
    try:
        render_samples("models/model.keras", "data/numpy", "data/split.csv", params, "plots/samples",
                       chosen.get("threshold"), PostProcess.chosen_in(chosen), chosen.get("tta", "none"))
    except InputError as error:
        raise SystemExit(f"render_samples: {error}") from error


if __name__ == "__main__":
    main()
