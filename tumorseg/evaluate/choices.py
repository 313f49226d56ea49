"""Evaluate's choices, made on validation and applied unchanged later: the threshold, post-processing, TTA
and the confidence score's model (tumorseg.evaluate.confidence).

The evaluate stage writes them into the model folder as choices.json (tumorseg.bundle); render_samples, predict
and the segmenter read them back through Choices.load, the one reader, which checks every value and names the
file and the fix. Choices.masks and
Choices.score are the one way probabilities become masks and confidence scores, in evaluate,
render_samples and predict alike: a slice gets the same mask and score wherever it is predicted.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tumorseg.atomic import write_json
from tumorseg.bundle import FORMAT, BundleError, read_stored
from tumorseg.evaluate.confidence import ConfidenceModel, slice_features
from tumorseg.evaluate.metrics import binarize
from tumorseg.evaluate.postprocess import PostProcess
from tumorseg.model.probabilities import TTA_FLIPS, Predictions


class ChoicesError(BundleError, ValueError):
    """A model folder's choices.json is missing, unreadable or holds an unusable choice."""


@dataclass(frozen=True)
class Choices:
    threshold: float = 0.5
    postprocess: PostProcess = field(default_factory=PostProcess)
    tta: str = "none"
    confidence: ConfidenceModel = field(default_factory=ConfidenceModel)

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 <= self.threshold <= 1.0:
            raise ChoicesError(f"threshold {self.threshold!r} must be a number in [0, 1].")
        if self.tta not in TTA_FLIPS:
            raise ChoicesError(f"tta must be one of {', '.join(TTA_FLIPS)}, got {self.tta!r}.")

    def save(self, path: str | Path) -> None:
        """Write the choices as choices.json (atomically)."""
        write_json(path, {"format": FORMAT, "threshold": self.threshold, "postprocess": self.postprocess.method,
                          "postprocess_min_fraction": self.postprocess.min_fraction, "tta": self.tta,
                          "confidence": self.confidence.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> "Choices":
        """The choices recorded at `path` (a model folder's choices.json)."""
        return read_stored(path, "choices of evaluate", "re-run the evaluate stage (dvc repro evaluate), or copy "
                           "the whole model folder", cls._parsed, ChoicesError)

    @classmethod
    def _parsed(cls, chosen: dict) -> "Choices":
        return cls(threshold=chosen["threshold"],
                   postprocess=PostProcess(chosen["postprocess"], float(chosen["postprocess_min_fraction"])),
                   tta=chosen["tta"], confidence=ConfidenceModel.from_dict(chosen["confidence"]))

    def masks(self, probabilities: np.ndarray) -> np.ndarray:
        """Boolean masks of probability maps ((H, W) or (N, H, W), any size): thresholded, then post-processed."""
        return self.postprocess.apply(binarize(probabilities, self.threshold))

    def features(self, predicted: Predictions) -> tuple[np.ndarray, np.ndarray]:
        """(masks (n, S, S), confidence features (n, len(FEATURES))) of model-resolution predictions."""
        masks = self.masks(predicted.probabilities)
        return masks, slice_features(predicted.probabilities, masks, predicted.agreement, predicted.types)

    def score(self, predicted: Predictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks (n, S, S), confidence (n,), features (n, len(FEATURES))) of model-resolution predictions."""
        masks, features = self.features(predicted)
        return masks, self.confidence.score(features), features

    def with_options(self, threshold: float | None = None, postprocess: PostProcess | None = None,
                     tta: str | None = None) -> "Choices":
        """A copy with the values that are given (not None) replacing the recorded ones."""
        changes = {"threshold": threshold, "postprocess": postprocess, "tta": tta}
        return replace(self, **{name: value for name, value in changes.items() if value is not None})
