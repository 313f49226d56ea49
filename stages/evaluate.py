"""evaluate stage: models/model.keras + data/ -> metrics/eval.json, plots/eval/ (threshold chosen on val)"""

from stages import run
from tumorseg.config import load_params
from tumorseg.evaluate.report import evaluate


def main():
    evaluate("models/model.keras", "data/numpy", "data/split.csv", "data/raw", load_params(),
             "metrics/eval.json", "plots/eval")


if __name__ == "__main__":
    run("evaluate", main)
