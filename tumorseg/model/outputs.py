"""The model's outputs: their names, and how to read them from a Keras model or an ONNX export alike.

A model without the type head has one output, the tumour probabilities (N, S, S, 1). With model.classify
it has two, by name: MASK_OUTPUT, the same probabilities, and TYPE_OUTPUT, the probabilities (N, 3) of
meningioma, glioma and pituitary. Keras-free, so the ONNX path never loads TensorFlow.
"""

import numpy as np

MASK_OUTPUT, TYPE_OUTPUT = "mask", "tumor_type"


def has_type_head(model) -> bool:
    """Whether the model also predicts the tumour type (model.classify)."""
    return TYPE_OUTPUT in getattr(model, "output_names", ())


def split_outputs(outputs: np.ndarray | dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask probabilities, type probabilities or None) of a model's outputs for one batch."""
    if isinstance(outputs, dict):
        return np.asarray(outputs[MASK_OUTPUT], np.float32), np.asarray(outputs[TYPE_OUTPUT], np.float32)
    return np.asarray(outputs, dtype=np.float32), None
