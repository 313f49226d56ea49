"""mat_to_numpy stage: data/raw/*.mat -> data/numpy/*.npy"""

import sys

from tumorseg.convert import ConversionError, mat_to_numpy
from tumorseg.params import load_params


def main():
    data = load_params()["data"]
    try:
        count = mat_to_numpy("data/raw", "data/numpy", int(data["image_size"]), float(data["normalize_percentile"]))
    except ConversionError as error:
        print(f"mat_to_numpy: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {count} slices to data/numpy/")


if __name__ == "__main__":
    main()
