"""Seeded synthetic MRI slices in the figshare layout, for offline runs and tests.

Each phantom is an axial T1-like slice: an elliptic head with a bright scalp,
a dark skull, a thin CSF rim and textured brain with ventricles, plus one
tumor whose site and look follow its class (1 meningioma at the brain
surface, 2 ring-enhancing glioma in the parenchyma, 3 small bright pituitary
tumor at the skull base midline). Every 10th patient gets half-size slices,
like the 256x256 slices of the real dataset.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from tumorseg.data.cvind import CVIND, OFFICIAL_FOLDS, write_cvind
from tumorseg.data.matfile import Slice, write_slice

INNER_SKULL = 0.87  # inner skull edge, in units of the head ellipse radius
SHELL_KNOTS = (0.0, 0.85, 0.865, 0.875, 0.925, 0.945, 0.985, 1.005)
SHELL_LEVELS = (0.35, 0.35, 0.35, 0.12, 0.12, 2.4, 2.4, 0.0)  # CSF, skull, scalp, air
MAX_VALUE = 12000
HALF_SIZE_EVERY = 10
MAX_BORDER_POINTS = 60


@dataclass
class Patient:
    """Head geometry (fractions of the image size), intensity scale and tumor plan of one patient."""

    centre: tuple  # (row, column) of the head centre
    axes: tuple  # (vertical, horizontal) head semi-axes
    tilt: float  # head rotation, radians
    level: float  # brain intensity
    tumor_angle: float
    tumor_depth: float  # glioma: distance of the centre from the head centre, in units of the inner skull radius
    tumor_radius: float
    drift: tuple  # tumor shift (row, column) from the first to the last slice


def make_patient(rng: np.random.Generator, label: int) -> Patient:
    """Draw one patient's head geometry, intensity scale and tumor plan."""
    radius = {1: (0.07, 0.10), 2: (0.09, 0.13), 3: (0.065, 0.08)}[label]
    return Patient(
        centre=(0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03)),
        axes=(rng.uniform(0.40, 0.45), rng.uniform(0.33, 0.39)),
        tilt=rng.uniform(-0.12, 0.12),
        level=float(np.exp(rng.uniform(np.log(250), np.log(2500)))),
        tumor_angle=rng.uniform(0, 2 * np.pi),
        tumor_depth=rng.uniform(0.15, 0.45),
        tumor_radius=rng.uniform(*radius),
        drift=tuple(rng.uniform(-0.02, 0.02, size=2)),
    )


def upsample(low: np.ndarray, factor: int, size: int) -> np.ndarray:
    """Linear interpolation of `low` by an integer factor along both axes, cropped to size x size."""
    weights = ((np.arange(factor) + 0.5) / factor).astype(np.float32)
    padded = np.concatenate([low, low[-1:]], axis=0)
    rows = padded[:-1, None] * (1 - weights)[:, None] + padded[1:, None] * weights[:, None]
    rows = rows.reshape(-1, low.shape[1])
    padded = np.concatenate([rows, rows[:, -1:]], axis=1)
    return (padded[:, :-1, None] * (1 - weights) + padded[:, 1:, None] * weights).reshape(len(rows), -1)[:size, :size]


def smooth_noise(rng: np.random.Generator, size: int, sigma: float, factor: int = 4) -> np.ndarray:
    """Gaussian-filtered noise drawn at 1/factor resolution, upsampled, about unit variance."""
    low = ndimage.gaussian_filter(rng.standard_normal((-(-size // factor),) * 2, dtype=np.float32), sigma)
    return upsample(low / (low.std() + 1e-6), factor, size)


def window(centre: np.ndarray, reach: float, size: int) -> tuple[slice, slice]:
    """Slices of the square of half-width `reach` around `centre`, clipped to the image."""
    low = np.clip(np.floor(np.asarray(centre) - reach).astype(int), 0, size - 1)
    high = np.clip(np.ceil(np.asarray(centre) + reach).astype(int) + 1, 1, size)
    return np.s_[low[0]:high[0], low[1]:high[1]]


def head_radius(patient: Patient, size: int, scale: float) -> np.ndarray:
    """Normalised elliptic radius of every pixel (1 at the outer scalp edge)."""
    rows, cols = np.ogrid[:size, :size]
    dy = (rows - patient.centre[0] * size).astype(np.float32)
    dx = (cols - patient.centre[1] * size).astype(np.float32)
    cos, sin = float(np.cos(patient.tilt)), float(np.sin(patient.tilt))
    across, down = float(patient.axes[1] * size * scale), float(patient.axes[0] * size * scale)
    u = dx * (cos / across) + dy * (sin / across)
    v = dy * (cos / down) - dx * (sin / down)
    return np.sqrt(u * u + v * v)


def head_point(patient: Patient, size: int, scale: float, angle: float, r: float) -> np.ndarray:
    """Image (row, column) of the point at elliptic radius r and angle `angle`."""
    u, v = r * np.cos(angle) * patient.axes[1], r * np.sin(angle) * patient.axes[0]
    cos, sin = np.cos(patient.tilt), np.sin(patient.tilt)
    return (np.array(patient.centre) + scale * np.array([u * sin + v * cos, u * cos - v * sin])) * size


def anatomy(rng: np.random.Generator, patient: Patient, r: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tumor-free slice in units of the brain level: shell layers, textured brain, ventricles."""
    fine = smooth_noise(rng, size, 1.0)
    brain = 0.92 + 0.08 * np.tanh(2.0 * fine)
    shell = np.interp(r, SHELL_KNOTS, SHELL_LEVELS).astype(np.float32) * (1 + 0.06 * fine)
    weight = np.clip((0.85 - r) / 0.02, 0, 1)
    image = weight * brain + (1 - weight) * shell
    height, width = 0.16 * patient.axes[0] * size, 0.025 * size
    for side in (-1, 1):
        centre = head_point(patient, size, 1.0, -np.pi / 2 + side * 1.35, 0.12)
        box = window(centre, height + 1, size)
        rows, cols = np.ogrid[box]
        inside = ((rows - centre[0]) / height) ** 2 + ((cols - centre[1]) / width) ** 2 < 1
        image[box][inside] = 0.3 + 0.05 * fine[box][inside]
    return image, fine


def tumor_site(patient: Patient, label: int, size: int, scale: float, position: float) -> np.ndarray:
    """Tumor centre (row, column) in pixels for a slice at `position` in [-1, 1]."""
    radius = patient.tumor_radius * size
    if label == 1:  # dural base: centre just inside the inner skull edge
        edge = head_point(patient, size, scale, patient.tumor_angle, INNER_SKULL)
        inward = np.array(patient.centre) * size - edge
        centre = edge + 0.6 * radius * inward / np.linalg.norm(inward)
    elif label == 2:
        centre = head_point(patient, size, scale, patient.tumor_angle, patient.tumor_depth * INNER_SKULL)
    else:  # skull base midline, below the middle of the head
        centre = np.array([patient.centre[0] + 0.5 * patient.axes[0] * scale, 0.5]) * size
    return centre + {1: 0.3, 2: 1.0, 3: 0.5}[label] * position * np.array(patient.drift) * size


def paint_tumor(rng: np.random.Generator, image: np.ndarray, fine: np.ndarray, r: np.ndarray, patient: Patient,
                label: int, position: float, scale: float) -> np.ndarray:
    """Add the tumor to `image` in place; return its binary mask."""
    size = image.shape[0]
    radius = max(patient.tumor_radius * size * (1 - 0.15 * position**2) * rng.uniform(0.95, 1.05), 2.0)
    centre = tumor_site(patient, label, size, scale, position)
    box = window(centre, 2.2 * radius + 2, size)
    image, fine, r = image[box], fine[box], r[box]
    rows, cols = np.ogrid[box]
    dy, dx = rows - centre[0], cols - centre[1]
    if label == 3:
        dy = dy * 1.1  # slightly flatter than tall
    if label == 2:  # irregular outline: a few random harmonics
        phi = np.arctan2(dy, dx)
        wobble = sum(rng.uniform(0.03, 0.1) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        radius = radius * (1 + wobble)
    rho = np.sqrt(dx * dx + dy * dy) / radius
    if label == 2:
        rho = rho - 0.06 * fine  # ragged edge
    mask = (rho < 1) & (r < INNER_SKULL)
    if not mask.any():
        mask[np.unravel_index(np.argmin(rho), rho.shape)] = True
    if label == 2:
        edema = (r < INNER_SKULL) & (rho < 1.6)
        image[edema] *= np.interp(rho[edema], (1.0, 1.6), (0.8, 1.0))
        core = np.where(rho < 0.6 + 0.1 * fine, 0.55 + 0.1 * fine, 1.6 + 0.1 * fine)
        image[mask] = core[mask]
    else:
        brightness = 1.7 if label == 1 else 1.8
        image[mask] = (brightness + 0.05 * fine)[mask]
    full = np.zeros((size, size), np.uint8)
    full[box] = mask
    return full


def border_points(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of the mask ordered around its centroid, as 1-based (x=column, y=row)."""
    rows, cols = np.nonzero(mask)
    box = np.s_[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    crop = mask[box].astype(bool)
    rows, cols = np.nonzero(crop & ~ndimage.binary_erosion(crop))
    rows, cols = rows + box[0].start, cols + box[1].start
    order = np.argsort(np.arctan2(rows - rows.mean(), cols - cols.mean()), kind="stable")
    keep = order[np.linspace(0, len(order) - 1, min(len(order), MAX_BORDER_POINTS)).astype(int)]
    return np.stack([cols[keep] + 1, rows[keep] + 1], axis=1).astype(np.float64)


def make_slice(rng: np.random.Generator, label: int, pid: str, image_size: int, patient: Patient | None = None,
               position: float = 0.0) -> Slice:
    """One synthetic slice; `patient` (drawn from rng when None) fixes the head and tumor plan."""
    patient = make_patient(rng, label) if patient is None else patient
    scale = 1 - 0.04 * position**2 + rng.uniform(-0.01, 0.01)
    r = head_radius(patient, image_size, scale)
    image, fine = anatomy(rng, patient, r, image_size)
    mask = paint_tumor(rng, image, fine, r, patient, label, position, scale)
    bias = 1 + 0.08 * smooth_noise(rng, image_size, 3.0, factor=16)
    noise = 0.03 * rng.standard_normal(image.shape, dtype=np.float32)
    noisy = np.hypot(image * bias + noise, noise[::-1])  # Rician magnitude; flipped rows act as the 2nd channel
    pixels = np.clip(np.rint(noisy * patient.level), 0, MAX_VALUE).astype(np.int16)
    return Slice(image=pixels, mask=mask, label=int(label), pid=str(pid), border=border_points(mask))


def plan_patients(patients: int, seed: int) -> tuple[list[int], list[str]]:
    """Balanced shuffled labels and unique digit PIDs, one per patient."""
    rng = np.random.default_rng([seed, 0])
    labels = rng.permutation(np.arange(patients) % 3 + 1)
    pids = rng.choice(900000, size=patients, replace=False) + 100000
    return [int(label) for label in labels], [str(pid) for pid in pids]


def patient_folds(labels: Iterable[int]) -> list[int]:
    """An official-style fold (1..5) per patient: each class's patients take the folds in turn."""
    seen = {}
    folds = []
    for label in labels:
        folds.append(seen.get(label, 0) % len(OFFICIAL_FOLDS) + 1)
        seen[label] = seen.get(label, 0) + 1
    return folds


def write_dataset(out_dir: str | Path, patients: int, slices_per_patient: int, image_size: int = 512,
                  seed: int = 0) -> int:
    """Write out_dir/1.mat .. out_dir/<patients*slices_per_patient>.mat and their cvind.mat; return the count."""
    out_dir = Path(out_dir)
    labels, pids = plan_patients(patients, seed)
    folds = np.repeat(patient_folds(labels), slices_per_patient)
    index = 0
    with tqdm(total=patients * slices_per_patient, desc="synthetic slices", unit="slice") as bar:
        for p, (label, pid) in enumerate(zip(labels, pids)):
            size = image_size // 2 if p % HALF_SIZE_EVERY == HALF_SIZE_EVERY - 1 else image_size
            patient = make_patient(np.random.default_rng([seed, 1, p]), label)
            for k in range(slices_per_patient):
                position = 2 * k / (slices_per_patient - 1) - 1 if slices_per_patient > 1 else 0.0
                rng = np.random.default_rng([seed, 2, p, k])
                index += 1
                write_slice(out_dir / f"{index}.mat", make_slice(rng, label, pid, size, patient, position))
                bar.update()
    write_cvind(out_dir / CVIND, folds)
    return index

