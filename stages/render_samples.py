"""render_samples stage: test predictions per class -> plots/samples/ (as evaluate chose: metrics/eval.json)"""

import json
from pathlib import Path

from stages import run
from tumorseg.config import load_params
from tumorseg.postprocess import PostProcess
from tumorseg.render import render_samples

METRICS = Path("metrics/eval.json")


def main():
    params = load_params()
    chosen = json.loads(METRICS.read_text()) if METRICS.is_file() else {}
    render_samples("models/model.keras", "data/numpy", "data/split.csv", params, "plots/samples",
                   chosen.get("threshold"), PostProcess.chosen_in(chosen), chosen.get("tta", "none"))


if __name__ == "__main__":
    run("render_samples", main)
