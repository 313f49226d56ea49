"""A compact copy of data/numpy, for taking the converted slices to another machine (tumorseg.experiments.offline_cv
takes the dev set to an offline GPU machine whose transfer is limited to 64 MiB).

The images (floats in [0, 1]) are stored as 8-bit JPEG (quality 95 by default; lossy: the cost on Dice is
measured in docs/scale-out.md) or as lossless 8-bit PNG, the masks as bits, exactly; labels, pids and
ids as they are. One .npz, read with allow_pickle=False; unpack writes data/numpy's layout again.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tumorseg.atomic import atomic_dir, atomic_file
from tumorseg.data.arrays import load_arrays, read_npz
from tumorseg.errors import InputError

FORMATS = ("jpeg", "png")


def encode(image: np.ndarray, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """One slice in [0, 1] as an 8-bit JPEG or PNG file's bytes."""
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    elif image_format == "png":
        Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
    else:
        raise ValueError(f"image_format must be one of {', '.join(FORMATS)}, got {image_format!r}")
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """The float32 slice in [0, 1] of an encoded one."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def pack(numpy_dir: str | Path, out_path: str | Path, image_format: str = "jpeg", quality: int = 95) -> int:
    """Write the arrays of `numpy_dir` to one .npz at `out_path`; returns its size in bytes."""
    arrays = load_arrays(numpy_dir)
    encoded = [encode(image, image_format, quality)
               for image in tqdm(arrays["images"], desc=f"pack ({image_format})", unit="slice")]
    masks = np.asarray(arrays["masks"]) > 0
    with atomic_file(out_path) as tmp:
        with open(tmp, "wb") as handle:  # savez adds .npz to a bare name
            np.savez_compressed(handle, images=np.frombuffer(b"".join(encoded), dtype=np.uint8),
                     offsets=np.cumsum([0] + [len(data) for data in encoded]).astype(np.int64),
                     masks=np.packbits(masks.reshape(len(masks), -1), axis=1), shape=np.array(masks.shape),
                     labels=np.asarray(arrays["labels"]), pids=np.asarray(arrays["pids"]),
                     ids=np.asarray(arrays["ids"]), image_format=np.array(image_format))
    return Path(out_path).stat().st_size


def unpack(packed_path: str | Path, numpy_dir: str | Path) -> int:
    """Write data/numpy's arrays from a packed file into `numpy_dir`; returns the number of slices."""
    packed_path = Path(packed_path)
    fix = "pack it again (python -m tumorseg.experiments.offline_cv pack)"
    contents = read_npz(packed_path, "packed data file", fix)
    missing = [name for name in ("images", "offsets", "masks", "shape", "labels", "pids", "ids") if name not in contents]
    if missing:
        raise InputError(f"{packed_path} lacks {', '.join(missing)}: {fix}.")
    count, height, width = (int(value) for value in contents["shape"])
    offsets, data = contents["offsets"], contents["images"].tobytes()
    if len(offsets) != count + 1 or offsets[-1] != len(data) or len(contents["ids"]) != count:
        raise InputError(f"{packed_path}: {count} slices declared, the stored images or ids do not match: {fix}.")
    with atomic_dir(numpy_dir) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.float32, (count, height, width))
        for i in tqdm(range(count), desc="unpack", unit="slice"):
            try:
                image = decode(data[offsets[i]:offsets[i + 1]])
            except Exception as error:  # noqa: BLE001  a damaged image
                raise InputError(f"{packed_path}: slice {i} cannot be decoded ({error}): {fix}.") from None
            if image.shape != (height, width):
                raise InputError(f"{packed_path}: slice {i} is {image.shape}, not {(height, width)}: {fix}.")
            images[i] = image
        images.flush()
        del images
        masks = np.unpackbits(contents["masks"], axis=1, count=height * width).reshape(count, height, width)
        np.save(tmp / "masks.npy", masks.astype(np.uint8))
        for name in ("labels", "pids", "ids"):
            np.save(tmp / f"{name}.npy", contents[name])
    return count
