"""train stage: data/numpy/ + data/split.csv -> models/unet/, metrics/train.json, plots/train/"""

from stages import run
from tumorseg.config import load_params
from tumorseg.train.loop import train


def main():
    train(load_params())


if __name__ == "__main__":
    run("train", main)
