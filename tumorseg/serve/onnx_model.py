"""A model exported to ONNX (model.onnx of `predict --export`), run by onnxruntime alone: no Keras or
TensorFlow is imported, so a server needs only onnxruntime, numpy, scipy, Pillow and this package.

OnnxModel offers what tumorseg.model.probabilities needs of a model (predict_on_batch, output_names) and the
input and output shapes that tumorseg.serve.segmenter checks.
"""

from pathlib import Path

import numpy as np

from tumorseg.errors import InputError
from tumorseg.model.outputs import MASK_OUTPUT, TYPE_OUTPUT


def _shape(dims) -> tuple:
    """An ONNX shape with its symbolic dimensions (the batch) as None."""
    return tuple(dim if isinstance(dim, int) else None for dim in dims)


class OnnxModel:
    """An exported segmentation model: image (N, S, S, 1) -> mask (N, S, S, 1) [and tumor_type (N, 3)]."""

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: ONNX model not found; write one with "
                             "python -m tumorseg.serve.predict --export DIR.")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for a bad file
            raise InputError(f"{path}: cannot load the ONNX model ({error}); export it again.") from None
        (source,) = self.session.get_inputs()
        self.input_name, self.input_shape = source.name, _shape(source.shape)
        outputs = self.session.get_outputs()
        self.output_names = [output.name for output in outputs]
        shapes = {output.name: _shape(output.shape) for output in outputs}
        self.output_shape = shapes[MASK_OUTPUT] if MASK_OUTPUT in shapes else shapes[self.output_names[0]]
        if len(outputs) > 1 and TYPE_OUTPUT not in shapes:
            raise InputError(f"{path}: outputs {self.output_names} are not this project's ({MASK_OUTPUT}, "
                             f"{TYPE_OUTPUT}); export the model again with this package.")

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        found = self.session.run(None, {self.input_name: np.asarray(batch, dtype=np.float32)})
        if len(found) == 1:
            return found[0]
        return dict(zip(self.output_names, found))
