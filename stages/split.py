"""split stage: data/numpy/ (+ data/raw/cvind.mat) -> data/split.csv (patient-level, stratified by class)"""

from stages import run
from tumorseg.config import load_params
from tumorseg.data.arrays import load_arrays
from tumorseg.data.cvind import CVIND, assign_official, read_cvind
from tumorseg.data.split import assign_subsets, patient_families, summary, write_split


def main():
    params = load_params()
    split = params.split
    arrays = load_arrays("data/numpy")
    moved = None
    if split.scheme == "cvind":
        path = f"data/raw/{CVIND}"
        subsets, moved = assign_official(arrays["pids"], arrays["labels"], arrays["ids"], read_cvind(path),
                                         split.fold, split.val, params.seed, patient_families(arrays["pids"]),
                                         path, split.val_fold)
    else:
        subsets = assign_subsets(arrays["pids"], arrays["labels"], split.val, split.test, split.folds,
                                 split.fold, params.seed)
    table = write_split(arrays["ids"], arrays["pids"], arrays["labels"], subsets, "data/split.csv")
    print(summary(table, moved))


if __name__ == "__main__":
    run("split", main)
