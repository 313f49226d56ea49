"""mat_to_numpy: figshare .mat slices -> model-ready arrays in data/numpy/.

Writes, into a folder that appears only once complete:
  images.npy  float32 (N, S, S) in [0, 1]
  masks.npy   uint8   (N, S, S) in {0, 1}
  labels.npy  uint8   (N,)  1 meningioma, 2 glioma, 3 pituitary
  pids.npy    unicode (N,)  patient ids
  ids.npy     int32   (N,)  figshare index: the slice came from data/raw/<id>.mat
Slices are streamed into memory-mapped arrays by a pool of worker processes,
so memory stays flat whatever the number of slices.
"""

import errno
import os
import shutil
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tumorseg.atomic import atomic_dir
from tumorseg.data.matfile import SLICE_NAME, MatFormatError, read_slice
from tumorseg.data.preprocess import preprocess_image, preprocess_mask
from tumorseg.errors import ProjectError


class ConvertError(ProjectError, ValueError):
    """data/raw is missing or holds no slices, or the conversion settings are unusable."""


def list_slices(raw_dir: str | Path) -> list[tuple[int, Path]]:
    """Sorted (index, path) of the N.mat files in raw_dir."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConvertError(f"{raw_dir}: no such folder; run the download stage first (dvc repro download).")
    found = []
    for path in raw_dir.iterdir():
        match = SLICE_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        raise ConvertError(f"{raw_dir}: no N.mat slice files; run the download stage first (dvc repro download).")
    return sorted(found)


class ConversionError(MatFormatError):
    """One or more slice files could not be converted; the message lists each with its reason."""


def convert_slice(path: str | Path, image_size: int, percentile: float) -> tuple[np.ndarray, np.ndarray, int, str]:
    """One .mat file -> (image, mask, label, pid) at the model resolution."""
    slice_ = read_slice(path, with_border=False)
    return (
        preprocess_image(slice_.image, image_size, percentile),
        preprocess_mask(slice_.mask, image_size),
        slice_.label,
        slice_.pid,
    )


def _convert_or_report(path, image_size, percentile):
    """convert_slice's result, or the MatFormatError's message of a bad file (the others go on)."""
    try:
        return convert_slice(path, image_size, percentile)
    except MatFormatError as error:
        return str(error)


def reserve_space(folder: Path, arrays: list[np.memmap]) -> None:
    """ConvertError unless the disk of `folder` can hold the memory-mapped `arrays` in full: checked by the
    free space first (a clear message), then their blocks are allocated (posix_fallocate), so that a disk
    that fills up later cannot end the stage with SIGBUS on a write into a mapped page."""
    needed = sum(array.nbytes for array in arrays)
    free = shutil.disk_usage(folder).free
    fix = "free space there or set data.image_size smaller"
    if free < needed:
        raise ConvertError(f"{folder.parent}: {needed / 2**20:,.0f} MiB needed for the arrays, {free / 2**20:,.0f} MiB "
                           f"free on that disk; nothing was written: {fix}.")
    for array in arrays:
        if hasattr(os, "posix_fallocate"):
            try:
                with open(array.filename, "r+b") as handle:
                    os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as error:
                if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: checked above
                    continue
                raise ConvertError(f"{folder.parent}: cannot reserve {needed / 2**20:,.0f} MiB for the arrays "
                                   f"({error.strerror}); nothing was written: {fix}.") from None


def mat_to_numpy(raw_dir: str | Path, out_dir: str | Path, image_size: int = 128, percentile: float = 99.5,
                 workers: int | None = None) -> int:
    """Convert every N.mat of raw_dir; return the number of slices.

    Every file is tried; when any is bad, ConversionError lists all of them
    (one line each) and nothing is written.
    """
    if image_size < 8:
        raise ConvertError(f"data.image_size must be at least 8, got {image_size}.")
    slices = list_slices(raw_dir)
    count = len(slices)
    workers = workers or os.cpu_count() or 1
    convert = partial(_convert_or_report, image_size=image_size, percentile=percentile)
    labels = np.zeros(count, np.uint8)
    pids, bad = [], []
    with atomic_dir(out_dir) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.float32, (count, image_size, image_size))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", "w+", np.uint8, (count, image_size, image_size))
        reserve_space(tmp, [images, masks])
        paths = [path for _, path in slices]
        with Pool(workers) as pool:
            results = pool.imap(convert, paths, chunksize=16)
            for i, result in enumerate(tqdm(results, total=count, desc="mat_to_numpy", unit="slice")):
                if isinstance(result, str):
                    bad.append(result)
                    continue
                images[i], masks[i], labels[i] = result[:3]
                pids.append(result[3])
        if bad:
            raise ConversionError(
                f"{len(bad)} of {count} slice file(s) in {raw_dir} could not be read; nothing was written. "
                "Download or extract them again (dvc repro download), or remove them:\n" + "\n".join(bad)
            )
        images.flush()
        masks.flush()
        del images, masks
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "pids.npy", np.array(pids, dtype=str))
        np.save(tmp / "ids.npy", np.array([index for index, _ in slices], dtype=np.int32))
    return count

