"""Figures of test predictions: one per sample and a class-by-sample grid.

Error view colours: true positive, false positive and false negative pixels
over the MRI, in colour-blind-safe (Okabe-Ito) colours.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_dir
from tumorseg.config import Params
from tumorseg.data.arrays import load_arrays, read_split, subset_positions
from tumorseg.evaluate import metrics
from tumorseg.evaluate.choices import Choices
from tumorseg.model.load import check_model_input, load_model
from tumorseg.model.probabilities import predict

DPI = 100
SAMPLE_FIGSIZE = (12.0, 3.6)  # inches: four panels side by side
GRID_CELL = 2.6  # inches per grid cell
GRID_MARGIN = 1.2  # inches for the column headers and the legend
ALPHA = 0.55
TRUTH_COLOR = (0.94, 0.89, 0.26)  # yellow
PRED_COLOR = (0.80, 0.47, 0.65)  # reddish purple
ERROR_COLORS = {
    "true positive": (0.0, 0.62, 0.45),  # bluish green
    "false positive": (0.84, 0.37, 0.0),  # vermillion
    "false negative": (0.34, 0.71, 0.91),  # sky blue
}


@dataclass
class Sample:
    id: int
    label: int
    image: np.ndarray  # (S, S) in [0, 1]
    truth: np.ndarray  # (S, S) bool
    pred: np.ndarray  # (S, S) bool
    dice: float
    confidence: float = float("nan")  # tumorseg.evaluate.confidence
    review: bool = False  # flagged for review by the confidence score

    @property
    def class_name(self) -> str:
        return LABEL_NAMES[self.label]


def select_samples(ids: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> dict[int, list[int]]:
    """Up to `per_class` ids of each class, drawn reproducibly, sorted.

    Each class draws from its sorted ids with its own generator seeded by
    (seed, label), so one class's choice does not depend on the others.
    Returns {label: [ids]} for every label in LABEL_NAMES.
    """
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    chosen = {}
    for label in LABEL_NAMES:
        pool = np.sort(ids[labels == label])
        count = min(int(per_class), len(pool))
        rng = np.random.default_rng([int(seed), int(label)])
        chosen[label] = sorted(int(i) for i in rng.choice(pool, size=count, replace=False))
    return chosen


def _gray(image):
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    return np.repeat(image[..., None], 3, axis=-1)


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float],
            alpha: float = ALPHA) -> np.ndarray:
    """RGB (S, S, 3) of the grey image with `mask` tinted in `color`."""
    rgb = _gray(image)
    mask = np.asarray(mask, dtype=bool)
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(color)
    return rgb


def error_view(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """RGB (S, S, 3): true positive, false positive, false negative pixels tinted."""
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    rgb = _gray(image)
    for name, mask in (
        ("true positive", truth & pred),
        ("false positive", ~truth & pred),
        ("false negative", truth & ~pred),
    ):
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(ERROR_COLORS[name])
    return rgb


def _legend_handles():
    return [Patch(facecolor=color, label=name) for name, color in ERROR_COLORS.items()]


def _confidence_text(sample: Sample, name: str) -> str:
    """' conf 0.93*' for a scored sample (* when flagged for review), '' for one without a score."""
    if np.isnan(sample.confidence):
        return ""
    return f"{name} {sample.confidence:.2f}{'*' if sample.review else ''}"


def _show(ax, rgb, title):
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def sample_figure(sample: Sample) -> Figure:
    """Four panels: MRI, true mask, predicted mask, error view."""
    fig = Figure(figsize=SAMPLE_FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    _show(axes[0], _gray(sample.image), "MRI")
    _show(axes[1], overlay(sample.image, sample.truth, TRUTH_COLOR), "true mask")
    _show(axes[2], overlay(sample.image, sample.pred, PRED_COLOR), "predicted mask")
    _show(axes[3], error_view(sample.image, sample.truth, sample.pred), "errors")
    fig.suptitle(f"{sample.class_name}  |  id {sample.id}  |  Dice {sample.dice:.3f}"
                 f"{_confidence_text(sample, '  |  confidence')}", fontsize=13)
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=3, frameon=False, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.82, bottom=0.12, wspace=0.05)
    return fig


def grid_figure(samples_by_class: dict[int, list[Sample]], threshold: float | None = None) -> Figure:
    """Grid: one column per class, one row per sample; each cell is an error view.

    `samples_by_class` maps label -> list of Sample; a class without samples
    gets a column that says "no test slices".
    """
    rows = max([len(samples_by_class.get(label, [])) for label in LABEL_NAMES] + [1])
    columns = len(LABEL_NAMES)
    height = rows * GRID_CELL + GRID_MARGIN
    fig = Figure(figsize=(columns * GRID_CELL, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for column, (label, name) in enumerate(LABEL_NAMES.items()):
        samples = samples_by_class.get(label, [])
        header = axes[0, column]
        header.annotate(
            name, xy=(0.5, 1.0), xycoords="axes fraction", xytext=(0, 20), textcoords="offset points",
            ha="center", va="bottom", fontsize=14, fontweight="bold",
        )
        for row in range(rows):
            ax = axes[row, column]
            ax.set_axis_off()
            if row < len(samples):
                sample = samples[row]
                _show(ax, error_view(sample.image, sample.truth, sample.pred),
                      f"id {sample.id}  Dice {sample.dice:.3f}{_confidence_text(sample, '  conf')}")
        if not samples:
            header.text(0.5, 0.5, "no test slices", ha="center", va="center", fontsize=11, color="0.4",
                        transform=header.transAxes)
    caption = "test slices" if threshold is None else f"test slices, threshold {threshold:g}"
    caption += " (conf: confidence score, *: flagged for review)"
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=3, frameon=False, fontsize=9,
               title=caption, title_fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=1.0 - 0.7 / height, bottom=0.6 / height,
                        wspace=0.05, hspace=0.18)
    return fig


def build_samples(model, arrays: dict[str, np.ndarray], positions: np.ndarray, chosen: dict[int, list[int]],
                  choices: Choices = Choices(), batch_size: int = 32) -> dict[int, list[Sample]]:
    """Predict the chosen slices as evaluate did (`choices`: test-time flips, threshold, post-processing and
    the confidence score); {label: [Sample]}."""
    ids = np.asarray(arrays["ids"])
    position_of = {int(ids[p]): int(p) for p in positions}
    samples = {}
    for label, wanted in chosen.items():
        picked = np.array([position_of[i] for i in wanted], dtype=np.int64)
        samples[label] = []
        if not len(picked):
            continue
        predicted = predict(model, arrays["images"], picked, batch_size, choices.tta)
        masks, scores, _ = choices.score(predicted)
        flags = choices.confidence.flags(scores)
        for position, pred, score, flag in zip(picked, masks, scores, flags):
            truth = np.asarray(arrays["masks"][position]) > 0
            dice = float(metrics.dice_per_image(truth[None], pred[None])[0])
            image = np.asarray(arrays["images"][position], dtype=np.float32)
            samples[label].append(Sample(int(ids[position]), label, image, truth, pred, dice, float(score), bool(flag)))
    return samples


def render_samples(model_path: str | Path, numpy_dir: str | Path, split_csv: str | Path, params: Params,
                   out_dir: str | Path, choices: Choices = Choices()) -> list[str]:
    """Write <class>_<id>.png per chosen test slice and grid.png into out_dir.

    `choices` default to a threshold of 0.5 and nothing else; the stage passes
    those evaluate chose and scored (the model folder's choices.json). Returns the names of the files written.
    """
    arrays = load_arrays(numpy_dir)
    split = read_split(split_csv, subsets=("test",))
    test = subset_positions(split, arrays, "test", split_csv)
    model = load_model(model_path)
    check_model_input(model, arrays["images"].shape[1], model_path)

    ids = np.asarray(arrays["ids"])[test]
    labels = np.asarray(arrays["labels"])[test]
    chosen = select_samples(ids, labels, params.render.per_class, params.seed)
    samples = build_samples(model, arrays, test, chosen, choices)

    written = []
    with atomic_dir(out_dir) as tmp:
        for label_samples in samples.values():
            for sample in label_samples:
                name = f"{sample.class_name}_{sample.id}.png"
                sample_figure(sample).savefig(Path(tmp) / name)
                written.append(name)
        grid_figure(samples, choices.threshold).savefig(Path(tmp) / "grid.png")
        written.append("grid.png")
    print(f"rendered {len(written) - 1} test slices at threshold {choices.threshold:g} to {out_dir}")
    return written
