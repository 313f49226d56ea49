"""render_samples stage: test predictions per class -> plots/samples/, every test slice -> plots/review/index.html
(as evaluate chose: metrics/eval.json)"""

from stages import run
from tumorseg.config import load_params
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.render import render_samples
from tumorseg.evaluate.review import write_review


def main():
    params = load_params()
    chosen = Choices.load("metrics/eval.json")
    render_samples("models/unet/model.keras", "data/numpy", "data/split.csv", params, "plots/samples", chosen)
    write_review("models/unet/model.keras", "data/numpy", "data/split.csv", "plots/review", chosen)


if __name__ == "__main__":
    run("render_samples", main)
