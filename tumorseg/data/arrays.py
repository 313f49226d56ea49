"""Load the arrays of data/numpy and the split table, with the checks every stage needs."""

import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tumorseg.errors import InputError

ARRAY_NAMES = ("images", "masks", "labels", "pids", "ids")
SPLIT_COLUMNS = ("index", "pid", "label", "subset")
MAX_NPZ_BYTES = 2**30  # of a predictions or packed data file: the dev set at 256x256 is about 150 MB


def load_arrays(numpy_dir: str | Path) -> dict[str, np.ndarray]:
    """Memory-map the arrays of `numpy_dir` and check their shapes agree."""
    numpy_dir = Path(numpy_dir)
    fix = f"re-run the stage that writes {numpy_dir} (dvc repro)."
    arrays = {}
    for name in ARRAY_NAMES:
        path = numpy_dir / f"{name}.npy"
        if not path.is_file():
            raise InputError(f"{path}: not found; {fix}")
        arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)

    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        found = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise InputError(f"{numpy_dir}: arrays of different lengths ({found}); {fix}")
    images, masks = arrays["images"], arrays["masks"]
    if images.ndim != 3 or images.shape[1] != images.shape[2] or masks.shape != images.shape:
        raise InputError(
            f"{numpy_dir}: images {images.shape} and masks {masks.shape} must both be (N, S, S); {fix}"
        )
    for name in ("labels", "pids", "ids"):
        if arrays[name].ndim != 1:
            raise InputError(f"{numpy_dir}: {name}.npy must be 1-D, found {arrays[name].shape}; {fix}")
    if len(np.unique(arrays["ids"])) != len(arrays["ids"]):
        raise InputError(f"{numpy_dir}: ids.npy holds duplicate ids; {fix}")
    return arrays


def read_npz(path: str | Path, what: str, fix: str, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """Every array of an .npz file (allow_pickle=False); a missing, truncated or foreign file is an
    InputError naming it, `what` it should be and the `fix`; so is one whose members declare more than
    `max_bytes` uncompressed (a 3 MB file can declare 3 GB), checked before any is read."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: {fix}.") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path} is not a readable {what} ({error}): {fix}.") from None
    if declared > max_bytes:
        raise InputError(f"{path}: its arrays declare {declared / 2**30:.1f} GiB, more than the "
                         f"{max_bytes / 2**30:g} GiB a {what} can hold here; refusing to read it: {fix}.")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: {fix}.") from None
    except Exception as error:  # noqa: BLE001  a truncated or foreign file
        raise InputError(f"{path} is not a readable {what} ({error}): {fix}.") from None


def read_split(split_csv: str | Path, subsets: Iterable[str] = ()) -> pd.DataFrame:
    """Read the split table; each subset in `subsets` must be non-empty."""
    split_csv = Path(split_csv)
    fix = "re-run the split stage (dvc repro split)."
    if not split_csv.is_file():
        raise InputError(f"{split_csv}: not found; {fix}")
    # keep_default_na=False: a PID such as NA, null or NaN stays that text, not a missing value
    split = pd.read_csv(split_csv, dtype={"pid": str}, keep_default_na=False)
    missing = [column for column in SPLIT_COLUMNS if column not in split.columns]
    if missing:
        raise InputError(f"{split_csv}: missing column(s) {', '.join(missing)}; {fix}")
    for subset in subsets:
        if not (split["subset"] == subset).any():
            raise InputError(f"{split_csv}: the {subset!r} subset is empty; {fix}")
    return split


def subset_positions(split: pd.DataFrame, arrays: dict[str, np.ndarray], subset: str,
                     split_csv: str | Path = "split.csv") -> np.ndarray:
    """Positions in the arrays of the `subset` slices, in ascending id order.

    Raises when an id of the split is not in ids.npy or when its patient or
    label disagree with the arrays.
    """
    rows = split[split["subset"] == subset].sort_values("index")
    position_of = {int(value): i for i, value in enumerate(np.asarray(arrays["ids"]))}
    wanted = rows["index"].astype(int).to_numpy()
    unknown = [int(value) for value in wanted if int(value) not in position_of]
    if unknown:
        raise InputError(
            f"{split_csv}: {len(unknown)} {subset} id(s) not found in ids.npy (first: {unknown[:5]}); "
            "the split and data/numpy come from different data: re-run them (dvc repro)."
        )
    positions = np.array([position_of[int(value)] for value in wanted], dtype=np.int64)
    pids = np.asarray(arrays["pids"])[positions].astype(str)
    labels = np.asarray(arrays["labels"])[positions].astype(int)
    differs = (pids != rows["pid"].astype(str).to_numpy()) | (labels != rows["label"].astype(int).to_numpy())
    if differs.any():
        raise InputError(
            f"{split_csv}: patient or label of {int(differs.sum())} {subset} id(s) disagree with data/numpy "
            f"(first: {wanted[differs][:5].tolist()}); re-run the split stage (dvc repro)."
        )
    return positions
