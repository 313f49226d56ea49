"""Find and read new scans for prediction: PNG/JPEG/TIFF, figshare .mat, DICOM and NIfTI.

Every reader returns a `ScanFile`: the 2-D slices of one file in display
orientation, the pixel spacing in mm when the file records it, and for NIfTI
what is needed to write a mask volume back in the input's voxel order.

NIfTI slices are taken along one voxel axis and shown as nibabel's tutorials
do (`slice.T` with the origin at the bottom, i.e. `np.rot90(slice)`); NIfTI
zooms in unknown units are taken as mm, the usual convention.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from tumorseg.data.matfile import read_slice
from tumorseg.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_MAGIC_OFFSET = 128
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
KNOWN_SUFFIXES = NIFTI_SUFFIXES + (".mat",) + IMAGE_SUFFIXES + DICOM_SUFFIXES
MAX_SPACING_MM = 100.0  # per pixel; MRI has 0.2 to 10
MAX_FILE_VALUES = 2**27  # pixels (times channels) of one input file: 512 slices of 512 x 512; checked by
# the sizes a file declares, before its pixels are decoded (a 1.4 MB TIFF can declare 60 pages of 4096 x 4096)
NIFTI_UNITS_TO_MM = {"mm": 1.0, "unknown": 1.0, "micron": 1e-3, "meter": 1e3}


class ReadError(InputError):
    """A file (or a slice given to the Python API) that cannot be read as a scan; the message names it and
    the reason."""


@dataclass
class ScanFile:
    path: Path
    kind: str  # "image", "mat", "dicom" or "nifti"
    slices: list  # 2-D arrays, display orientation
    spacing: tuple | None = None  # (row mm, column mm) of the displayed slices
    slice_indices: list = field(default_factory=lambda: [0])
    nifti: object = None  # the nibabel image (NIfTI only)
    axis: int | None = None  # voxel axis the NIfTI slices were taken along
    volume_shape: tuple | None = None  # the NIfTI volume as 3-D (a 2-D image gets a last axis of 1)


def has_dicom_magic(path: str | Path) -> bool:
    """True when the file carries the 'DICM' marker after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def detect_format(path: str | Path) -> str | None:
    """The reader kind for `path` from its name (or DICOM marker), or None when unsupported."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    suffix = Path(name).suffix
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".mat":
        return "mat"
    if suffix in DICOM_SUFFIXES or has_dicom_magic(path):
        return "dicom"
    return None


def check_declared_values(path, declared: int, layout: str) -> None:
    """ReadError when a file declares more than MAX_FILE_VALUES pixel values, before any is read."""
    if declared > MAX_FILE_VALUES:
        raise ReadError(f"{path}: declares {layout}, {declared:,} pixel values, more than the {MAX_FILE_VALUES:,} "
                        "one input may hold; refusing to read it: split it into smaller files.")


def checked_slice(source, array) -> np.ndarray:
    """A 2-D array of real numbers, at least 2 x 2 pixels, every value finite also in float32, or ReadError
    naming `source` (a file, or a slice given to the Python API).

    Non-finite values (NaN, inf, and floats beyond float32's range such as 1e300, which the model's
    float32 input would make inf) become 0, as an unwritten pixel: one of them would otherwise turn every
    probability of the slice into NaN, an empty mask that reads as "no tumour"."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":  # bool, signed and unsigned integers, floats
        raise ReadError(f"{source}: pixel type {array.dtype} is not a real number type; give the slice as "
                        "integers or floats (a complex image: its magnitude, np.abs).")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.ndim != 2 or min(array.shape) < 2:
        raise ReadError(f"{source}: expected a 2-D image of at least 2 x 2 pixels, found shape {array.shape}.")
    if array.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(array)
            if array.dtype.itemsize > 4:
                bad |= np.abs(array) > np.finfo(np.float32).max
        if bad.any():
            array = np.where(bad, 0, array).astype(np.float32 if array.dtype.itemsize < 4 else array.dtype)
    return array


def checked_spacing(source, spacing) -> tuple[float, float]:
    """(row mm, column mm), or ReadError unless it is a pair of positive sizes of at most MAX_SPACING_MM: an
    area computed from anything else (-0.0 mm², inf) would be wrong without saying so."""
    try:
        pair = tuple(float(value) for value in spacing)
    except (TypeError, ValueError):
        pair = None
    if pair is None or len(pair) != 2 or not all(np.isfinite(value) and 0 < value <= MAX_SPACING_MM
                                                   for value in pair):
        raise ReadError(f"{source}: pixel spacing {spacing!r} mm is not a pair of positive sizes of at most "
                        f"{MAX_SPACING_MM:g} mm; fix PixelSpacing (or the NIfTI zooms), or give the right "
                        "(row mm, column mm).")
    return pair


def _luma(rgb):
    """ITU-R 601 gray of an (H, W, 3+) array, as Pillow's convert('L') but keeping the bit depth."""
    rgb = np.asarray(rgb, dtype=np.float32)[..., :3]
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def read_image(path: Path) -> ScanFile:
    """PNG/JPEG/TIFF, 8 or 16 bit; colour converted to gray. Every frame of a multi-page TIFF is a slice
    (numbered from 0, like NIfTI slices)."""
    slices = []
    with Image.open(path) as image:
        # the size of every page before any is decoded (TIFF pages: their headers; an animated PNG decodes)
        declared = [(frame.size, len(frame.getbands())) for frame in ImageSequence.Iterator(image)]
        check_declared_values(path, sum(w * h * bands for (w, h), bands in declared),
                              f"{len(declared)} page(s) of up to {max(w for (w, _), _ in declared)} x "
                              f"{max(h for (_, h), _ in declared)}")
        for frame in ImageSequence.Iterator(image):
            frame.load()
            frame = ImageOps.exif_transpose(frame)  # as a viewer shows it (JPEG EXIF orientation)
            array = np.asarray(frame) if frame.mode in HIGH_BIT_MODES else np.asarray(frame.convert("L"))
            slices.append(checked_slice(path, array))
    return ScanFile(path, "image", slices, slice_indices=list(range(len(slices))))


def read_mat(path: Path) -> ScanFile:
    """One figshare-format slice (MATLAB v7.3); the files record no pixel spacing."""
    return ScanFile(path, "mat", [checked_slice(path, read_slice(path, with_border=False).image)])


def read_dicom(path: Path) -> ScanFile:
    """One DICOM slice with RescaleSlope/RescaleIntercept applied and PixelSpacing when present."""
    import pydicom

    dataset = pydicom.dcmread(path)
    if "PixelData" not in dataset:
        raise ReadError(f"{path}: DICOM file without pixel data (not an image).")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ReadError(f"{path}: multi-frame DICOM ({frames} frames); pass single-slice files.")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    check_declared_values(path, rows * columns * samples, f"{rows} x {columns} x {samples} samples")
    array = dataset.pixel_array
    if array.ndim == 3:
        array = _luma(array)
    array = array.astype(np.float32)
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    array = array * slope + intercept
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        array = array.max() - array
    spacing = dataset.get("PixelSpacing")
    spacing = checked_spacing(path, spacing) if spacing is not None and len(spacing) == 2 else None
    return ScanFile(path, "dicom", [checked_slice(path, array)], spacing=spacing)


def read_nifti(path: Path, axis: int = 2) -> ScanFile:
    """Every slice of a 2-D or 3-D NIfTI volume along voxel `axis`."""
    import nibabel as nib

    image = nib.load(path)
    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise ReadError(f"{path}: NIfTI image of shape {image.shape}; pass a 2-D or 3-D volume (one time point).")
    if axis not in (0, 1, 2):
        raise ReadError(f"{path}: --axis must be 0, 1 or 2, found {axis}.")
    check_declared_values(path, int(np.prod(shape, dtype=np.float64)), f"a volume of {shape}")
    volume = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    unit = image.header.get_xyzt_units()[0]
    zooms = [float(z) * NIFTI_UNITS_TO_MM.get(unit, 1.0) for z in image.header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    first, second = [a for a in range(3) if a != axis]
    slices = [checked_slice(path, np.rot90(np.take(volume, k, axis=axis))) for k in range(shape[axis])]
    return ScanFile(
        path, "nifti", slices,
        spacing=checked_spacing(path, (zooms[second], zooms[first])),  # rot90: the second axis along rows
        slice_indices=list(range(shape[axis])),
        nifti=image,
        axis=axis,
        volume_shape=shape,
    )


def nifti_mask_volume(scan: ScanFile, masks: Iterable[np.ndarray]) -> np.ndarray:
    """The slice masks (display orientation) put back into a uint8 volume of the input's voxel shape."""
    volume = np.zeros(scan.volume_shape, dtype=np.uint8)
    for index, mask in zip(scan.slice_indices, masks):
        target = [slice(None)] * 3
        target[scan.axis] = index
        volume[tuple(target)] = np.rot90(mask, -1)
    return volume.reshape(scan.nifti.shape)


def read_scan(path: str | Path, axis: int = 2) -> ScanFile:
    """Read one file with the reader its format needs; ReadError for an unsupported type."""
    path = Path(path)
    kind = detect_format(path)
    if kind is None:
        raise ReadError(
            f"{path}: unsupported file type; use PNG/JPEG/TIFF, figshare .mat, DICOM or NIfTI (.nii, .nii.gz)."
        )
    if kind == "nifti":
        return read_nifti(path, axis)
    return {"image": read_image, "mat": read_mat, "dicom": read_dicom}[kind](path)


def folder_scans(root: Path, skip: Path | None = None) -> tuple[list[Path], int]:
    """Files of a supported type under `root` (recursively; hidden files and those under `skip` left out),
    and the number of other files."""
    files = sorted(
        path for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".") and (skip is None or skip not in path.resolve().parents)
    )
    supported = [path for path in files if detect_format(path)]
    return supported, len(files) - len(supported)


def find_inputs(paths: Iterable[Path],
                out_dir: Path | None = None) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]], int]:
    """(file, output stem) pairs to read, problems as (path, reason), and the count of ignored files.

    Folders are searched with folder_scans (files of other types are ignored;
    so is `out_dir`); a file named directly is always read, so an unsupported one
    fails. Stems mirror the layout under each folder and get -2, -3, ... when two
    inputs would share one.
    """
    found, problems, ignored, seen, stems = [], [], 0, set(), set()
    skip = out_dir.resolve() if out_dir is not None else None
    for root in paths:
        if root.is_dir():
            supported, others = folder_scans(root, skip)
            ignored += others
            if not supported:
                problems.append((root, "no supported files in this folder"))
            candidates = [(path, path.relative_to(root)) for path in supported]
        elif root.is_file():
            candidates = [(root, Path(root.name))]
        else:
            problems.append((root, "not a regular file (a FIFO, device or socket): give image files or folders"
                             if root.exists() else "not found"))
            continue
        for path, relative in candidates:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                stem = strip_suffix(relative)
                if stem.name in ("", ".", ".."):
                    problems.append((path, "its name gives no output name; rename the file"))
                    continue
                found.append((path, unique_stem(stem.as_posix(), stems)))
    return found, problems, ignored


def strip_suffix(relative: Path) -> Path:
    """Path without its file-type suffix; other dots stay (DICOM files are often named by UID)."""
    lower = relative.name.lower()
    suffix = next((s for s in KNOWN_SUFFIXES if lower.endswith(s)), "")
    name = relative.name[:len(relative.name) - len(suffix)] or relative.name
    return relative.parent / name if name not in (".", "..") else Path(name)


def unique_stem(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem`-2, -3, ... when already taken; records the result in `taken`."""
    candidate, number = stem, 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}"
    taken.add(candidate)
    return candidate
