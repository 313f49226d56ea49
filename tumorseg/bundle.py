"""A trained model's folder: everything needed to segment a slice as evaluate scored it, and nothing else.

    models/unet/
        model.keras         the network (train stage)
        preprocessing.json  how its slices were prepared, the classes, the params that shaped it (train stage)
        choices.json        evaluate's choices on validation: threshold, post-processing, TTA, confidence
                            model (evaluate stage; tumorseg.evaluate.choices)

Segmenter.load(folder), predict --model folder, render_samples and the exports read one folder. Two stages
write into it, each its own files (DVC allows outputs side by side; only one output inside another is
refused). A released ensemble (tumorseg.experiments.release) is a folder of the same files, its model.keras
averaging its members, with a generated MODEL_CARD.md beside them.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tumorseg import LABEL_NAMES
from tumorseg.atomic import write_json
from tumorseg.errors import InputError

DEFAULT_FOLDER = Path("models/unet")  # the pipeline's, written by the train and evaluate stages
RELEASED_FOLDER = Path("models/released")  # the released ensemble, in git (tumorseg.experiments.release)
MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
PREPROCESSING_FILE = "preprocessing.json"
CHOICES_FILE = "choices.json"
CARD_FILE = "MODEL_CARD.md"
FORMAT = 1  # version of preprocessing.json and choices.json; a reader refuses a newer one


T = TypeVar("T")


def is_percentile(value) -> bool:
    """Whether `value` is a usable normalisation percentile: a number in (0, 100]."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 < value <= 100.0


class BundleError(InputError):
    """A model folder is missing a file, or holds one this version cannot read."""


@dataclass(frozen=True)
class Preprocessing:
    """How the model's input slices were made (tumorseg.data.preprocess.preprocess_image) and what it knows."""

    image_size: int
    normalize_percentile: float
    channels: int = 1
    classes: tuple[str, ...] = tuple(LABEL_NAMES.values())
    trained_with: dict[str, Any] = field(default_factory=dict)  # the params sections that shaped the model

    @classmethod
    def from_params(cls, params) -> "Preprocessing":
        """The preprocessing of a run of `params` (a tumorseg.config.Params)."""
        tree = params.model_dump()
        shaped = {key: tree[key] for key in ("seed", "data", "split", "model", "train")}
        return cls(params.data.image_size, params.data.normalize_percentile, trained_with=shaped)

    def save(self, path: str | Path) -> None:
        write_json(path, {"format": FORMAT, **asdict(self), "classes": list(self.classes)})

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessing":
        """The preprocessing recorded at `path` (a model folder's preprocessing.json)."""
        return read_stored(path, "preprocessing", "re-run the train stage (dvc repro train), or copy the whole "
                           "model folder", cls._parsed)

    @classmethod
    def _parsed(cls, stored: dict) -> "Preprocessing":
        size, percentile = stored["image_size"], stored["normalize_percentile"]
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
            raise ValueError(f"image_size {size!r} is not a whole number in [8, 4096]")
        if not is_percentile(percentile):
            raise ValueError(f"normalize_percentile {percentile!r} is not a number in (0, 100]")
        if stored["channels"] != 1:
            raise ValueError(f"channels {stored['channels']!r}: this version reads single-channel slices")
        classes = tuple(stored["classes"])
        if classes != tuple(LABEL_NAMES.values()):
            raise ValueError(f"classes {list(classes)} are not this version's {list(LABEL_NAMES.values())}")
        trained_with = stored.get("trained_with", {})
        if not isinstance(trained_with, dict):
            raise ValueError("trained_with is not a mapping")
        return cls(size, float(percentile), 1, classes, trained_with)


def read_stored(path: str | Path, what: str, fix: str, parse: Callable[[dict], T],
                error: type[BundleError] = BundleError) -> T:
    """parse() of the JSON file at `path` after its format is checked; `error` naming the file, what is wrong
    and `fix` when it is missing, unreadable or parse() refuses it (ValueError, KeyError or TypeError)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found; {fix}.")
    try:
        stored = json.loads(path.read_text())
        if stored["format"] != FORMAT:
            raise ValueError(f"format {stored['format']!r}, this version reads {FORMAT}")
        return parse(stored)
    except (ValueError, KeyError, TypeError, AttributeError) as failure:
        detail = f"no {failure}" if isinstance(failure, KeyError) else str(failure)
        raise error(f"{path}: unusable {what} ({detail}); {fix}.") from None


def model_file(folder: str | Path) -> Path:
    """The network in `folder`: model.keras, else an ONNX export's model.onnx; BundleError naming the fix."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix.lower() in (".keras", ".onnx"):
        raise BundleError(f"{folder}: a model file on its own; give the folder that holds it with its "
                          f"{PREPROCESSING_FILE} and {CHOICES_FILE} (e.g. {DEFAULT_FOLDER}).")
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such model folder; train one (dvc repro) or give the folder of a "
                          "trained or released model.")
    for name in (MODEL_FILE, ONNX_FILE):
        if (folder / name).exists():
            return folder / name
    raise BundleError(f"{folder}: holds neither {MODEL_FILE} nor {ONNX_FILE}; re-run the train stage "
                      "(dvc repro train), or copy the whole model folder.")
