"""evaluate stage: models/model.keras + data/ -> metrics/eval.json, plots/eval/ (threshold chosen on val)"""

from tumorseg.data import InputError
from tumorseg.evaluate import evaluate
from tumorseg.matfile import MatFormatError
from tumorseg.params import load_params


def main():
    params = load_params()
    try:
        evaluate("models/model.keras", "data/numpy", "data/split.csv", "data/raw", params,
                 "metrics/eval.json", "plots/eval")
    except (InputError, MatFormatError) as error:
        raise SystemExit(f"evaluate: {error}") from error


if __name__ == "__main__":
    main()
