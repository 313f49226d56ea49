"""mat_to_numpy stage: data/raw/*.mat -> data/numpy/*.npy"""

from tumorseg.convert import mat_to_numpy
from tumorseg.params import load_params


def main():
    data = load_params()["data"]
    count = mat_to_numpy("data/raw", "data/numpy", int(data["image_size"]), float(data["normalize_percentile"]))
    print(f"wrote {count} slices to data/numpy/")


if __name__ == "__main__":
    main()
