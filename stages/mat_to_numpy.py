"""mat_to_numpy stage: data/raw/*.mat -> data/numpy/*.npy"""

from stages import run
from tumorseg.config import load_params
from tumorseg.data.convert import mat_to_numpy


def main():
    data = load_params().data
    count = mat_to_numpy("data/raw", "data/numpy", data.image_size, data.normalize_percentile)
    print(f"wrote {count} slices to data/numpy/")


if __name__ == "__main__":
    run("mat_to_numpy", main)
