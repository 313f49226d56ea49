"""download stage: data.source (figshare, synthetic or a local folder) -> data/raw/N.mat"""

from tumorseg.download import prepare_raw
from tumorseg.params import load_params


def main():
    data = load_params()["data"]
    synthetic = dict(data["synthetic"])
    seed = int(synthetic.pop("seed"))
    prepare_raw(str(data["source"]), "data/raw", data["figshare_url"], synthetic, seed)


if __name__ == "__main__":
    main()
