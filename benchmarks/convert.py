"""Benchmark mat_to_numpy: .mat files -> model-ready arrays, slices/s and peak RSS.

    python benchmarks/convert.py [--slices 1472] [--size 128]

Uses the real sample in ../shared/data/figshare-sample (each file linked
several times to reach --slices) when present, else synthetic 512x512 slices.
"""

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from tumorseg.data.convert import mat_to_numpy
from tumorseg.data.synthetic import write_dataset

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "figshare-sample" / "mat"


def make_inputs(folder, count):
    if SAMPLE.is_dir():
        sources = sorted(SAMPLE.glob("*.mat"))
        origin = f"real sample ({len(sources)} files, linked)"
    else:

        synthetic = folder / "synthetic"
        synthetic.mkdir()
        write_dataset(synthetic, patients=20, slices_per_patient=3, image_size=512, seed=0)
        sources = sorted(synthetic.glob("*.mat"))
        origin = "synthetic 512x512 slices (linked)"
    raw = folder / "raw"
    raw.mkdir()
    for i in range(count):
        os.symlink(sources[i % len(sources)].resolve(), raw / f"{i + 1}.mat")
    return raw, origin


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=1472)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, origin = make_inputs(Path(tmp), args.slices)
        for path in raw.iterdir():  # read once so the timing is not of a cold disk cache
            path.read_bytes()
        start = time.perf_counter()
        count = mat_to_numpy(raw, Path(tmp) / "numpy", args.size)
        seconds = time.perf_counter() - start
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"command: python benchmarks/convert.py --slices {args.slices} --size {args.size}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"input: {count} slices, {origin}")
    print(f"wall: {seconds:.2f} s ({count / seconds:.0f} slices/s)")
    print(f"peak RSS: main process {peak_self:.0f} MB, largest worker {peak_child:.0f} MB")


if __name__ == "__main__":
    main()
