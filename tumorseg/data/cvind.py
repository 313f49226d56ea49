"""The dataset's own patient-level folds: cvind.mat, and the split built on them.

figshare publishes `cvind.mat` beside the slices: one fold (1..5) for each
of the 3,064 indices, entry N-1 for `N.mat` (the split of Cheng et al. 2015
and of most papers on the dataset). With split.scheme = cvind, split.fold = k
makes official fold k+1 the test set.

cvind puts a few patient families in two folds (`MR048294` in one,
`MR048294B` in another); a family moves whole to the fold that holds most
of its slices, so no patient is in test and in train or val.

Validation is drawn from the other folds, class by class: families in a
seeded random order join it while the class's validation slices stay within
split.val of that class's slices. A family larger than what is left is
passed over, so validation is made of whole families, balanced per class,
and the large PNG-rebuilt groups of the dev set (150-290 slices) train.
"""

import io
import os
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tumorseg.data.hdf5 import stored_here
from tumorseg.data.matfile import HDF5_SIGNATURE, matlab_header
from tumorseg.errors import ProjectError

CVIND = "cvind.mat"
OFFICIAL_FOLDS = (1, 2, 3, 4, 5)
DATASET_SLICES = 3064
MAX_ENTRIES = 100_000  # one per slice: a declared size beyond this is refused before anything is read
# MATLAB v5: a 128-byte header, then one element per variable (its flags, dimensions and name come first)
V5_HEADER_BYTES, V5_MATRIX, V5_COMPRESSED, V5_PEEK_BYTES = 128, 14, 15, 512
V5_LOGICAL, V5_COMPLEX = 0x0200, 0x0800  # array flags
V5_MAX_ELEMENT = MAX_ENTRIES * 8 + V5_PEEK_BYTES  # cvind's element: its headers and MAX_ENTRIES doubles


class CvindError(ProjectError, ValueError):
    """cvind.mat is missing or unusable, or its folds cannot make the requested split."""


def _check_declared(path, shape):
    """CvindError unless `shape` (as the file declares it) holds at most MAX_ENTRIES entries."""
    if int(np.prod(shape, dtype=np.float64)) > MAX_ENTRIES:
        raise CvindError(f"{path}: 'cvind' declares shape {tuple(shape)}, more than {MAX_ENTRIES:,} entries (one "
                         "per slice); refusing to read it: use the cvind.mat of the figshare download.")


def _read_v73(path):
    with h5py.File(path, "r") as f:
        if "cvind" not in f:
            raise CvindError(f"{path}: no dataset 'cvind'; use the cvind.mat of the figshare download.")
        item = stored_here(path, f, "cvind", what="cvind.mat", error=CvindError)
        if not isinstance(item, h5py.Dataset):
            raise CvindError(f"{path}: no dataset 'cvind'; use the cvind.mat of the figshare download.")
        _check_declared(path, item.shape)
        if item.attrs.get("MATLAB_class", b"double") in (b"logical", "logical"):
            raise CvindError(f"{path}: 'cvind' holds logical values, not fold numbers; use the cvind.mat of the "
                             "figshare download.")
        return item[()]


def _v5_matrix_header(head: bytes, order: str) -> tuple[str, tuple[int, ...], int]:
    """(name, dimensions, array flags) from the first bytes of a v5 miMATRIX element (its tag included)."""
    flags = struct.unpack(order + "I", head[16:20])[0]
    dims_bytes = struct.unpack(order + "I", head[28:32])[0]
    if dims_bytes > 4 * 32:
        raise ValueError(f"{dims_bytes // 4} dimensions")
    dims = struct.unpack(order + f"{dims_bytes // 4}i", head[32:32 + dims_bytes])
    position = 32 + -(-dims_bytes // 8) * 8
    first = struct.unpack(order + "I", head[position:position + 4])[0]
    if first >> 16:  # the small element format: the length in the upper half, the name in the tag
        name = head[position + 4:position + 4 + (first >> 16)]
    else:
        length = struct.unpack(order + "I", head[position + 4:position + 8])[0]
        name = head[position + 8:position + 8 + length]
    return name.decode("ascii", "replace"), dims, flags


def _v5_element(path, handle, position: int, kind: int, count: int, order: str) -> bytes:
    """The uncompressed miMATRIX element at `position` (tag included), at most V5_MAX_ELEMENT bytes: a
    compressed one is inflated only that far, and refused when its data goes on beyond."""
    limit = V5_MAX_ELEMENT
    handle.seek(position + 8)
    if kind == V5_MATRIX:
        if count > limit:
            raise CvindError(f"{path}: 'cvind' takes {count:,} bytes, more than {limit:,}; refusing to read it.")
        return struct.pack(order + "II", kind, count) + handle.read(count)
    inflate = zlib.decompressobj()
    element = inflate.decompress(handle.read(count), limit)
    if not inflate.eof:
        raise CvindError(f"{path}: 'cvind' inflates to more than {limit:,} bytes; refusing to read it.")
    return element


def _read_v5(path):
    """cvind alone from a MATLAB v5 file: each variable's name and declared size are read from its first
    bytes (a compressed one inflated only that far), and only cvind is handed to scipy, after the checks;
    scipy's loadmat and whosmat would inflate every variable before it (a 6 MB file: 6.5 GB)."""
    from scipy.io import loadmat

    with open(path, "rb") as f:
        header = f.read(V5_HEADER_BYTES)
        order = "<" if header[126:128] == b"IM" else ">"
        size, position = os.fstat(f.fileno()).st_size, V5_HEADER_BYTES
        while position + 8 <= size:
            f.seek(position)
            kind, count = struct.unpack(order + "II", f.read(8))
            if kind == V5_COMPRESSED:
                head = zlib.decompressobj().decompress(f.read(min(count, 4096)), V5_PEEK_BYTES)
            elif kind == V5_MATRIX:
                head = struct.pack(order + "II", kind, count) + f.read(min(count, V5_PEEK_BYTES))
            else:
                raise CvindError(f"{path}: element of type {kind} at byte {position}; not a MATLAB v5 variable: "
                                 "the file is corrupt.")
            name, dims, flags = _v5_matrix_header(head, order)
            end = position + 8 + (count if kind == V5_COMPRESSED else -(-count // 8) * 8)
            if name == "cvind":
                _check_declared(path, dims)
                if flags & (V5_LOGICAL | V5_COMPLEX):
                    kind_found = "logical" if flags & V5_LOGICAL else "complex"
                    raise CvindError(f"{path}: 'cvind' holds {kind_found} values, not fold numbers; use the "
                                     "cvind.mat of the figshare download.")
                return loadmat(io.BytesIO(header + _v5_element(path, f, position, kind, count, order)))["cvind"]
            position = end
    raise CvindError(f"{path}: no variable 'cvind'; use the cvind.mat of the figshare download.")


def read_cvind(path: str | Path) -> np.ndarray:
    """The official fold of each index: an int array, entry N-1 for N.mat. MATLAB v7.3 (HDF5) or v5."""
    path = Path(path)
    fix = "copy the cvind.mat of the figshare download into the data source, or use split.scheme=random."
    if not path.is_file():
        raise CvindError(f"{path}: not found; split.scheme=cvind needs the dataset's fold file: {fix}")
    with open(path, "rb") as f:
        head = f.read(520)
    try:
        if HDF5_SIGNATURE in (head[512:520], head[:8]):
            folds = _read_v73(path)
        elif head.startswith(b"MATLAB 5.0"):
            folds = _read_v5(path)
        else:
            raise CvindError(f"{path}: not a MATLAB v5 or v7.3 file; the file is corrupt: {fix}")
    except CvindError:
        raise
    except Exception as error:  # h5py and scipy raise many kinds on damaged files
        raise CvindError(f"{path}: unreadable ({error}); the file is corrupt or truncated: {fix}") from error
    folds = np.asarray(folds)
    real = np.issubdtype(folds.dtype, np.integer) or np.issubdtype(folds.dtype, np.floating)
    if folds.ndim != 2 or 1 not in folds.shape or not real:
        raise CvindError(
            f"{path}: 'cvind' must be one number per index of the dataset, shape 1x{DATASET_SLICES} or "
            f"{DATASET_SLICES}x1, found {folds.dtype} {folds.shape}: {fix}"
        )
    folds = folds.ravel()
    bad = ~np.isin(folds, OFFICIAL_FOLDS)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CvindError(  # the value itself is not echoed: no content of a file lands in a message
            f"{path}: folds must be whole numbers 1..5; the entry at index {first + 1} is not "
            f"({int(bad.sum())} such entries): {fix}"
        )
    return folds.astype(int)


def folds_of(ids: np.ndarray, cvind: np.ndarray, path: str | Path = CVIND) -> np.ndarray:
    """The official fold of each slice id (N of N.mat)."""
    ids = np.asarray(ids, dtype=int)
    outside = (ids < 1) | (ids > len(cvind))
    if outside.any():
        raise CvindError(
            f"{path}: {int(outside.sum())} slice(s) have no fold (cvind holds {len(cvind)} indices; first id "
            f"without one: {int(ids[outside][0])}); the slices and cvind.mat come from different data: "
            "use the cvind.mat of the same download, or split.scheme=random."
        )
    return cvind[ids - 1]


def write_cvind(path: str | Path, folds: np.ndarray) -> None:
    """Write `folds` (one per index) as cvind.mat, MATLAB v7.3 laid out as the figshare file is."""
    folds = np.asarray(folds, dtype=np.float64).reshape(-1, 1)  # MATLAB's 1xN, column-major, as HDF5 sees it
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as f:
        dataset = f.create_dataset("cvind", data=folds)
        dataset.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as f:
        f.write(matlab_header())


def unite_families(families: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, int]:
    """Each slice's fold after moving every family whole to the fold that holds most of its slices.

    Ties go to the lower fold. Returns (folds, moved): moved counts the slices whose fold changed.
    """
    table = pd.DataFrame({"family": families, "fold": np.asarray(folds, dtype=int)})
    counts = table.groupby(["family", "fold"]).size().reset_index(name="n")
    counts = counts.sort_values(["family", "n", "fold"], ascending=[True, False, True])
    home = counts.drop_duplicates("family").set_index("family")["fold"]
    united = table["family"].map(home).to_numpy(dtype=int)
    return united, int((united != table["fold"].to_numpy()).sum())


def draw_validation(families: np.ndarray, labels: np.ndarray, candidates: np.ndarray, fraction: float,
                    seed: int) -> set[str]:
    """Families (among `candidates`, a boolean mask of slices) for validation, balanced per class."""
    table = pd.DataFrame({"family": families, "label": labels})[candidates]
    family_label = table.groupby("family")["label"].agg(lambda x: x.mode().iloc[0])
    family_size = table.groupby("family").size()
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(family_label.unique()):
        members = family_label.index[family_label == label].to_numpy()
        if len(members) < 2:
            raise CvindError(
                f"{CVIND}: class {label} has {len(members)} patient(s) outside the test fold; validation and "
                "training each need one: use more data or split.scheme=random."
            )
        members = members[rng.permutation(len(members))]
        target = fraction * family_size[members].sum()
        taken, size = [], 0
        for family in members:
            if size + family_size[family] <= target:
                taken.append(family)
                size += family_size[family]
        if not taken:  # every family is larger than the target: the smallest one
            taken = [min(members, key=lambda family: (family_size[family], family))]
        chosen.extend(taken)
    return set(chosen)


def assign_official(pids: np.ndarray, labels: np.ndarray, ids: np.ndarray, cvind: np.ndarray, fold: int, val: float,
                    seed: int, families: np.ndarray, path: str | Path = CVIND,
                    val_fold: int | None = None) -> tuple[np.ndarray, int]:
    """Subset of each slice (train/val/test): official fold `fold`+1 is test; and the slices moved.

    Validation is drawn from the other folds by `val` (draw_validation), or, with `val_fold`, is official fold
    `val_fold`+1 whole (a nested study: the models of one test fold, each validated on another fold).
    `families` maps PIDs to patient families (tumorseg.data.split.patient_families).
    """
    folds, moved = unite_families(families, folds_of(ids, cvind, path))
    present = sorted(set(folds.tolist()))
    for name, chosen in (("split.fold", fold), ("split.val_fold", val_fold)):
        if chosen is not None and chosen + 1 not in present:
            raise CvindError(
                f"{path}: official fold {chosen + 1} ({name}={chosen}) has no slices in data/raw; folds present: "
                f"{', '.join(map(str, present))}: set {name} to one of "
                f"{', '.join(str(k - 1) for k in present)}."
            )
    test = folds == fold + 1
    if val_fold is None:
        val_families = draw_validation(families, np.asarray(labels), ~test, val, seed)
        in_val = np.isin(families, list(val_families))
    else:
        in_val = folds == val_fold + 1
    subsets = np.where(test, "test", np.where(in_val, "val", "train"))
    return subsets, moved
