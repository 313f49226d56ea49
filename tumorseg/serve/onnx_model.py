"""A model exported to ONNX (model.onnx of `predict --export`), run by onnxruntime alone: no Keras or
TensorFlow is imported, so a server needs only onnxruntime, onnx, numpy, scipy, Pillow and this package.

Before onnxruntime sees a file, onnx reads it without its external data and every tensor is checked to be
stored in the file itself: an ONNX file may name other files as "external data", which older onnxruntime
releases follow anywhere (../../../etc/passwd), copying a local file into the weights.

OnnxModel offers what tumorseg.model.probabilities needs of a model (predict_on_batch, output_names) and the
input and output shapes that tumorseg.serve.segmenter checks.
"""

from pathlib import Path

import numpy as np

from tumorseg.errors import InputError
from tumorseg.model.outputs import MASK_OUTPUT, TYPE_OUTPUT


def _graph_tensors(graph):
    """Every tensor of an ONNX graph: initializers, sparse ones, node attributes, subgraphs'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes):
    for attribute in attributes:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def check_stored_here(path: Path) -> None:
    """InputError unless every tensor of the ONNX file is stored in it (no external data)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise InputError(f"{path}: not an ONNX model ({type(error).__name__}); export it again.") from None
    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors += list(_attribute_tensors(node.attribute))
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data for tensor in tensors):
        raise InputError(f"{path}: its weights name external data (other files); an export of this project holds "
                         "them itself: refusing to load it.")


def _shape(dims) -> tuple:
    """An ONNX shape with its symbolic dimensions (the batch) as None."""
    return tuple(dim if isinstance(dim, int) else None for dim in dims)


class OnnxModel:
    """An exported segmentation model: image (N, S, S, 1) -> mask (N, S, S, 1) [and tumor_type (N, 3)]."""

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: ONNX model not found; write one with "
                             "python -m tumorseg.serve.predict --export DIR.")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file (a folder, FIFO or device); give the model.onnx that "
                             "python -m tumorseg.serve.predict --export DIR writes.")
        check_stored_here(path)
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for a bad file
            raise InputError(f"{path}: cannot load the ONNX model ({error}); export it again.") from None
        inputs = self.session.get_inputs()
        shape = _shape(inputs[0].shape) if len(inputs) == 1 else ()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(shape) != 4:
            found = ", ".join(f"{source.name} {source.type} {source.shape}" for source in inputs) or "none"
            raise InputError(f"{path}: inputs ({found}) are not this project's one float image input (N, S, S, 1); "
                             "export the model again with this package.")
        self.input_name, self.input_shape = inputs[0].name, shape
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
