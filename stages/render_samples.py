"""render_samples stage: models/unet/ (the model and evaluate's choices) + data/ -> plots/samples/ (test predictions
per class), plots/review/index.html (every test slice)"""

from stages import run
from tumorseg.bundle import CHOICES_FILE, DEFAULT_FOLDER, MODEL_FILE
from tumorseg.config import load_params
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.render import render_samples
from tumorseg.evaluate.review import write_review


def main():
    params = load_params()
    chosen = Choices.load(DEFAULT_FOLDER / CHOICES_FILE)
    model = DEFAULT_FOLDER / MODEL_FILE
    render_samples(model, "data/numpy", "data/split.csv", params, "plots/samples", chosen)
    write_review(model, "data/numpy", "data/split.csv", "plots/review", chosen)


if __name__ == "__main__":
    run("render_samples", main)
