"""Read and write slices in the figshare MATLAB v7.3 format.

Each file holds one slice as the struct `cjdata` in an HDF5 file with a
512-byte MATLAB header: `label` float64 (1, 1), `PID` uint16 character codes
(n, 1), `image` int16, `tumorMask` uint8 (MATLAB logical), `tumorBorder`
float64 (1, 2k) = x1, y1, x2, y2, ... (x = column, y = row, 1-based).
MATLAB stores arrays column-major, so h5py sees `image` and `tumorMask`
transposed; this module returns them in display orientation.
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from tumorseg.data.hdf5 import stored_here
from tumorseg.errors import ProjectError

FIELDS = ("label", "PID", "image", "tumorBorder", "tumorMask")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SLICE_NAME = re.compile(r"^([1-9][0-9]*)\.mat$")  # N.mat, N = the slice's index in the dataset
MAX_SIDE = 4096  # pixels along a side of `image` and `tumorMask`; the dataset's are 256 and 512
MAX_PID_LENGTH = 64  # characters of `PID`; the dataset's have 6 to 9
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a CSV cell starting so is a formula to a spreadsheet


class MatFormatError(ProjectError, ValueError):
    """A file that is not a readable figshare slice."""


@dataclass
class Slice:
    image: np.ndarray  # (H, W) display orientation: int16 as figshare stores it, else float32 (see _by_value)
    mask: np.ndarray  # (H, W) uint8 in {0, 1}
    label: int  # 1 meningioma, 2 glioma, 3 pituitary
    pid: str
    border: np.ndarray  # (k, 2) float64, columns x (column), y (row), 1-based


def _check_signature(path):
    with open(path, "rb") as f:
        head = f.read(520)
    if head[512:520] == HDF5_SIGNATURE:
        return
    if head.startswith(b"MATLAB 5.0"):
        raise MatFormatError(
            f"{path}: MATLAB v5 file; this pipeline reads the figshare v7.3 (HDF5) files. "
            "Re-save it in MATLAB with save(..., '-v7.3') or use the original download."
        )
    raise MatFormatError(
        f"{path}: not a MATLAB v7.3 file (no HDF5 data after the 512-byte header); "
        "the file is corrupt or truncated: download or extract it again."
    )


def _numeric_field(path, group, name, integer=False, max_size=None):
    """The array of field `name`; MatFormatError naming the file and the field unless it is numeric and
    stored in the file; `max_size` caps each dimension, checked before anything is read."""
    item = stored_here(path, group, name, error=MatFormatError)
    if isinstance(item, h5py.Dataset) and max_size is not None and max(item.shape or (0,)) > max_size:
        raise MatFormatError(f"{path}: field '{name}' declares shape {item.shape}: more than {max_size} along "
                             "a side, far beyond any figshare slice; refusing to read it.")
    numeric = isinstance(item, h5py.Dataset) and np.issubdtype(item.dtype, np.integer if integer else np.number)
    data = item[()] if numeric else None  # read only once the type is right
    if not isinstance(data, np.ndarray):
        found = item.dtype if isinstance(item, h5py.Dataset) else type(item).__name__
        wanted = "integer character codes" if integer else "numbers"
        raise MatFormatError(
            f"{path}: field '{name}' must hold {wanted}, found {found}; the file is not a figshare slice."
        )
    return data


def _by_value(image: np.ndarray) -> np.ndarray:
    """The image with its values kept: int16 when it is integer and fits (the figshare files), else float32,
    so a uint16 image above 32767 does not wrap to negative and a float image in [0, 1] is not truncated."""
    if np.issubdtype(image.dtype, np.integer) and (not image.size or (
            image.min() >= np.iinfo(np.int16).min and image.max() <= np.iinfo(np.int16).max)):
        return image.astype(np.int16, copy=False)
    return image.astype(np.float32)


def _decode_pid(path, codes):
    """The PID from its UTF-16 code units (MATLAB's char); MatFormatError for a lone surrogate or a PID that
    a spreadsheet would run as a formula when it opens a CSV holding it."""
    try:
        pid = np.asarray(codes, dtype="<u2").tobytes().decode("utf-16-le")
    except UnicodeDecodeError:
        raise MatFormatError(f"{path}: field 'PID' is not valid text (a lone UTF-16 surrogate); "
                             "the file is damaged.") from None
    if pid[:1] in FORMULA_STARTS:
        raise MatFormatError(f"{path}: field 'PID' {pid[:20]!r} starts with {pid[0]!r}, which a spreadsheet "
                             "runs as a formula from the CSV outputs; a figshare PID starts with a letter or digit.")
    return pid


def read_slice(path: str | Path, with_border: bool = True) -> Slice:
    """Read one slice; raise MatFormatError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MatFormatError(f"{path}: not a regular file (a folder, FIFO or device named like a slice); "
                             "remove it from the data.")
    _check_signature(path)
    try:
        with h5py.File(path, "r") as f:
            if "cjdata" not in f:
                raise MatFormatError(f"{path}: no 'cjdata' struct; this is not a figshare slice file.")
            group = stored_here(path, f, "cjdata", error=MatFormatError)
            if not isinstance(group, h5py.Group):
                raise MatFormatError(f"{path}: 'cjdata' must be a struct (an HDF5 group), found a dataset; "
                                     "this is not a figshare slice file.")
            needed = FIELDS if with_border else tuple(n for n in FIELDS if n != "tumorBorder")
            missing = [name for name in needed if name not in group]
            if missing:
                raise MatFormatError(
                    f"{path}: 'cjdata' lacks field(s) {', '.join(missing)}; "
                    "the file is incomplete: download or extract it again."
                )
            image = _numeric_field(path, group, "image", max_size=MAX_SIDE).T
            mask = _numeric_field(path, group, "tumorMask", max_size=MAX_SIDE).T
            label = _numeric_field(path, group, "label", max_size=1)
            pid_codes = _numeric_field(path, group, "PID", integer=True, max_size=MAX_PID_LENGTH)
            border = (_numeric_field(path, group, "tumorBorder", max_size=2 * MAX_SIDE * MAX_SIDE) if with_border
                      else np.zeros((1, 0)))
    except MatFormatError:
        raise
    except (OSError, KeyError) as error:
        raise MatFormatError(f"{path}: unreadable HDF5 data ({error}); the file is corrupt or truncated.") from error

    if not np.isfinite(image).all():
        raise MatFormatError(f"{path}: field 'image' holds NaN or infinite values; the file is damaged.")

    if image.ndim != 2 or image.shape != mask.shape:
        raise MatFormatError(
            f"{path}: image {image.shape} and tumorMask {mask.shape} must be 2-D of the same shape."
        )
    if label.size != 1 or label.item() not in (1, 2, 3):  # 1.7 or NaN is no class
        raise MatFormatError(f"{path}: label must be one of 1, 2, 3, found {label.ravel()[:3]}.")
    if border.size % 2:
        raise MatFormatError(f"{path}: tumorBorder must hold x, y pairs, found {border.size} values.")
    if pid_codes.size == 0 or pid_codes.min() < 1 or pid_codes.max() > 0xFFFF:
        raise MatFormatError(f"{path}: field 'PID' must hold character codes, found {pid_codes.ravel()[:5]}.")
    pid = _decode_pid(path, pid_codes.ravel())
    return Slice(
        image=_by_value(image),
        mask=(mask > 0).astype(np.uint8),
        label=int(label.item()),
        pid=pid,
        border=border.reshape(-1, 2),
    )


def matlab_header() -> bytes:
    created = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    header = text.encode("ascii").ljust(116, b" ")
    header += b"\x00" * 8  # subsystem data offset
    header += b"\x00\x02" + b"IM"  # version 0x0200, little-endian marker
    return header.ljust(512, b"\x00")


def write_slice(path: str | Path, slice_: Slice) -> None:
    """Write `slice_` as MATLAB v7.3 exactly as the figshare files are laid out."""
    path = Path(path)
    fields = [np.array(list(name), dtype="S1") for name in FIELDS]
    with h5py.File(path, "w", userblock_size=512, libver="earliest") as f:
        group = f.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        group.attrs.create("MATLAB_fields", fields, dtype=h5py.vlen_dtype(np.dtype("S1")))

        def put(name, data, matlab_class, chunks=None, int_decode=None):
            kwargs = dict(chunks=chunks, compression="gzip") if chunks else {}
            dataset = group.create_dataset(name, data=data, **kwargs)
            dataset.attrs["H5PATH"] = np.bytes_("/cjdata")
            dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
            if int_decode is not None:
                dataset.attrs["MATLAB_int_decode"] = np.int32(int_decode)

        height, width = slice_.image.shape
        put("label", np.array([[float(slice_.label)]]), "double")
        codes = np.frombuffer(slice_.pid.encode("utf-16-le"), dtype="<u2")  # MATLAB char: UTF-16 code units
        put("PID", codes.astype(np.uint16).reshape(-1, 1), "char", int_decode=2)
        put("image", slice_.image.astype(np.int16).T, "int16", chunks=(width, max(height // 8, 1)))
        put("tumorBorder", slice_.border.reshape(1, -1).astype(np.float64), "double")
        put("tumorMask", slice_.mask.astype(np.uint8).T, "logical", chunks=(width, max(height // 4, 1)), int_decode=1)
    with open(path, "r+b") as f:
        f.write(matlab_header())
