"""evaluate stage: models/unet/ + data/ -> metrics/eval.json, plots/eval/ (threshold chosen on val)"""

import shutil

from stages import run
from tumorseg.config import load_params
from tumorseg.evaluate.report import evaluate

# render_samples' pages of the model evaluated last: they go with its metrics, which DVC removes before
# this stage runs, so they are removed before it starts: an evaluate that fails, or is killed (-9), leaves
# no page of the older model behind (render_samples writes them again after a successful evaluate)
VIEWS_OF_THE_METRICS = ("plots/review", "plots/samples")


def main():
    for folder in VIEWS_OF_THE_METRICS:
        shutil.rmtree(folder, ignore_errors=True)
    evaluate("models/unet/model.keras", "data/numpy", "data/split.csv", "data/raw", load_params(),
             "metrics/eval.json", "plots/eval")


if __name__ == "__main__":
    run("evaluate", main)
