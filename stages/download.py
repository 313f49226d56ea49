"""download stage: data.source (figshare, synthetic or a local folder) -> data/raw/N.mat"""

from stages import run
from tumorseg.config import load_params
from tumorseg.data.sources import prepare_raw


def main():
    data = load_params().data
    prepare_raw(data.source, "data/raw", data.figshare_url, data.synthetic)


if __name__ == "__main__":
    run("download", main)
