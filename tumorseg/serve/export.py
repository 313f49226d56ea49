"""Export the Keras model for serving: a TensorFlow SavedModel, TFLite files and ONNX.

Layout of the export folder:
  saved_model/          TF Serving / tf.saved_model.load; signature `serving_default`
  model.tflite          float32 TFLite (converted from the SavedModel)
  model_float16.tflite  weights quantised to float16 (only with float16=True)
  model.onnx            ONNX (Keras's export through tf2onnx), run with onnxruntime alone
                        (tumorseg.serve.onnx_model; predict --model DIR/model.onnx)
  export.json           how to run the files without this package: input, outputs, masks, confidence
  preprocessing.json    the model folder's files (tumorseg.bundle), so the export is a model folder too:
  choices.json          Segmenter.load(DIR) and predict --model DIR run its model.onnx

Every export takes a batch of preprocessed images (N, S, S, 1) float32 in
[0, 1] (see tumorseg.data.preprocess.preprocess_image) and returns tumour
probabilities (N, S, S, 1); a model with the type head (model.classify) also
returns its (N, 3) type probabilities beside them. TFLite files are run with
the LiteRT interpreter (package ai-edge-litert) when it is installed, else
with tf.lite.Interpreter.
"""

import json
from pathlib import Path

import numpy as np

from tumorseg.model.outputs import split_outputs

SAVED_MODEL_DIR = "saved_model"
TFLITE_FLOAT32 = "model.tflite"
TFLITE_FLOAT16 = "model_float16.tflite"
ONNX = "model.onnx"
METADATA = "export.json"


def export_saved_model(model, path: str | Path) -> None:
    """Write `model` as a TensorFlow SavedModel at `path` (a folder)."""
    model.export(str(path), format="tf_saved_model", verbose=False)


def export_onnx(model, path: str | Path) -> None:
    """Write `model` as ONNX at `path` (Keras traces a model only once it has been called)."""
    size = model.input_shape[1]
    model.predict_on_batch(np.zeros((1, size, size, 1), np.float32))
    model.export(str(path), format="onnx", verbose=False)


def run_onnx(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, S, S) of preprocessed images (N, S, S) from an ONNX file, with onnxruntime."""
    from tumorseg.serve.onnx_model import OnnxModel

    batch = np.asarray(images, dtype=np.float32)[..., None]
    return split_outputs(OnnxModel(onnx_path).predict_on_batch(batch))[0].reshape(np.shape(images))


def convert_to_tflite(saved_model_dir: str | Path, path: Path, float16: bool = False) -> None:
    """Convert a SavedModel to a TFLite file; float16=True quantises the weights to float16."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())


def export_all(model, out_dir: Path, contract: dict[str, object], float16: bool = False) -> dict[str, Path]:
    """SavedModel, float32 TFLite (and float16 TFLite), ONNX and export.json (`contract` and the file names)
    into `out_dir`; returns the paths."""
    paths = {"saved_model": out_dir / SAVED_MODEL_DIR, "tflite": out_dir / TFLITE_FLOAT32, "onnx": out_dir / ONNX}
    export_saved_model(model, paths["saved_model"])
    convert_to_tflite(paths["saved_model"], paths["tflite"])
    export_onnx(model, paths["onnx"])
    if float16:
        paths["tflite_float16"] = out_dir / TFLITE_FLOAT16
        convert_to_tflite(paths["saved_model"], paths["tflite_float16"], float16=True)
    files = {name: path.name for name, path in paths.items()}
    (out_dir / METADATA).write_text(json.dumps({**contract, "files": files}, indent=2) + "\n")
    return paths


def run_saved_model(saved_model_dir: str | Path, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, S, S) of preprocessed images (N, S, S) from a SavedModel."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    batch = tf.constant(np.asarray(images, dtype=np.float32)[..., None])
    return split_outputs(loaded.serve(batch))[0].reshape(np.shape(images))


def tflite_interpreter(tflite_path: str | Path):
    """A TFLite interpreter from LiteRT when installed, else from TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(tflite_path))


def run_tflite(tflite_path: str | Path, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, S, S) of preprocessed images (N, S, S) from a TFLite file, in one batch."""
    images = np.asarray(images, dtype=np.float32)
    interpreter = tflite_interpreter(tflite_path)
    source = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(source, images[..., None].shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source, images[..., None])
    interpreter.invoke()
    # the mask is the 4-D output (a model with the type head also has a (N, 3) one)
    mask = next(detail for detail in interpreter.get_output_details() if len(detail["shape"]) == 4)
    return np.asarray(interpreter.get_tensor(mask["index"])).reshape(images.shape)


def check_exports(model, export_dir: Path, size: int, threshold: float, samples: int = 2,
                  seed: int = 0) -> dict[str, dict[str, float] | float]:
    """Compare the exports with the Keras model on random inputs.

    Returns {"max_difference": {"SavedModel": .., "TFLite": .., "ONNX": ..}, "onnx_mask_agreement": ..} and,
    when the float16 file exists, "float16_mask_agreement" (fractions of equal mask pixels).
    """
    images = np.random.default_rng(seed).random((samples, size, size), dtype=np.float32)
    reference = split_outputs(model.predict_on_batch(images[..., None]))[0].reshape(images.shape)
    saved = run_saved_model(export_dir / SAVED_MODEL_DIR, images)
    lite = run_tflite(export_dir / TFLITE_FLOAT32, images)
    onnx = run_onnx(export_dir / ONNX, images)
    result = {"max_difference": {
        "SavedModel": float(np.abs(saved - reference).max()),
        "TFLite": float(np.abs(lite - reference).max()),
        "ONNX": float(np.abs(onnx - reference).max()),
    }, "onnx_mask_agreement": float(((onnx >= threshold) == (reference >= threshold)).mean())}
    if (export_dir / TFLITE_FLOAT16).is_file():
        half = run_tflite(export_dir / TFLITE_FLOAT16, images)
        result["float16_mask_agreement"] = float(((half >= threshold) == (reference >= threshold)).mean())
    return result
