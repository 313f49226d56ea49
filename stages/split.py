"""split stage: data/numpy/ -> data/split.csv (patient-level, stratified by class)"""

from tumorseg.data import load_arrays
from tumorseg.params import load_params
from tumorseg.split import assign_subsets, summary, write_split


def main():
    params = load_params()
    split = params["split"]
    arrays = load_arrays("data/numpy")
    subsets = assign_subsets(
        arrays["pids"], arrays["labels"], float(split["val"]), float(split["test"]),
        int(split["folds"]), split["fold"], int(params["seed"]),
    )
    table = write_split(arrays["ids"], arrays["pids"], arrays["labels"], subsets, "data/split.csv")
    print(summary(table))


if __name__ == "__main__":
    main()
