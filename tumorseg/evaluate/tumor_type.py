"""Scores of the tumour-type output (model.classify) on labelled slices.

Labels are 1, 2, 3 (tumorseg.LABEL_NAMES); the type head's probabilities are
in that order. Per-class precision and recall are given for the classes
present among the true labels (the dev set has two).
"""

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_recall_fscore_support,
)

from tumorseg import LABEL_NAMES


def predicted_labels(type_probs: np.ndarray) -> np.ndarray:
    """Label (1, 2, 3) of the most probable type of each row of (n, 3) probabilities."""
    return np.argmax(np.asarray(type_probs), axis=1) + 1


def type_scores(true_labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """{"type_accuracy", "type_balanced_accuracy", "<class>_type_precision", "<class>_type_recall"}."""
    true_labels, predicted = np.asarray(true_labels, dtype=int), np.asarray(predicted, dtype=int)
    present = sorted(set(true_labels.tolist()))
    precision, recall, _, _ = precision_recall_fscore_support(true_labels, predicted, labels=present,
                                                              zero_division=0)
    scores = {"type_accuracy": float(accuracy_score(true_labels, predicted)),
              "type_balanced_accuracy": float(balanced_accuracy_score(true_labels, predicted))}
    for label, p, r in zip(present, precision, recall):
        scores[f"{LABEL_NAMES[label]}_type_precision"] = float(p)
        scores[f"{LABEL_NAMES[label]}_type_recall"] = float(r)
    return scores


def confusion_rows(true_labels: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """One row per slice, (actual, predicted) class names: what DVC's confusion template counts."""
    return pd.DataFrame({"actual": [LABEL_NAMES[int(label)] for label in true_labels],
                         "predicted": [LABEL_NAMES[int(label)] for label in predicted]})
