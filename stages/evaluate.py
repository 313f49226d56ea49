"""evaluate stage: models/unet/ + data/ -> models/unet/choices.json (chosen on validation), metrics/eval.json,
metrics/eval_details.json, plots/eval/ (test scored with those choices)"""

from stages import run
from tumorseg.config import load_params
from tumorseg.evaluate.report import evaluate


def main():
    evaluate(load_params())


if __name__ == "__main__":
    run("evaluate", main)
