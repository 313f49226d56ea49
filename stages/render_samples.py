"""render_samples stage: test predictions per class -> plots/samples/, every test slice -> plots/review/index.html
(as evaluate chose: metrics/eval.json)"""

import json
from pathlib import Path

from stages import run
from tumorseg.config import load_params
from tumorseg.postprocess import PostProcess
from tumorseg.render import render_samples
from tumorseg.review import write_review

METRICS = Path("metrics/eval.json")


def main():
    params = load_params()
    chosen = json.loads(METRICS.read_text()) if METRICS.is_file() else {}
    threshold, postprocess, tta = chosen.get("threshold", 0.5), PostProcess.chosen_in(chosen), chosen.get("tta", "none")
    render_samples("models/model.keras", "data/numpy", "data/split.csv", params, "plots/samples",
                   threshold, postprocess, tta)
    write_review("models/model.keras", "data/numpy", "data/split.csv", "plots/review", threshold, postprocess, tta)


if __name__ == "__main__":
    run("render_samples", main)
