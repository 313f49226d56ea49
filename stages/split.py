"""split stage: data/numpy/ -> data/split.csv (patient-level, stratified by class)"""

from stages import run
from tumorseg.config import load_params
from tumorseg.data import load_arrays
from tumorseg.split import assign_subsets, summary, write_split


def main():
    params = load_params()
    split = params.split
    arrays = load_arrays("data/numpy")
    subsets = assign_subsets(arrays["pids"], arrays["labels"], split.val, split.test, split.folds, split.fold,
                             params.seed)
    table = write_split(arrays["ids"], arrays["pids"], arrays["labels"], subsets, "data/split.csv")
    print(summary(table))


if __name__ == "__main__":
    run("split", main)
