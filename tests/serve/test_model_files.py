"""Model files from elsewhere (a .keras archive, an ONNX export) can neither pull in another local file nor
take gigabytes: each is refused, in one line naming the file, before the library reads it."""

import io
import zipfile

import h5py
import keras
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import identity_model, model_folder
from tumorseg.errors import InputError
from tumorseg.model.load import load_model
from tumorseg.serve.onnx_model import OnnxModel
from tumorseg.serve.segmenter import Segmenter, segmentation_model

SIZE = 16


def rewrite_weights(source, target, change):
    """A copy of the .keras archive `source` at `target`, its model.weights.h5 changed by change(h5py.File)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as weights:
        change(weights)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def first_dataset(weights):
    found = []
    weights.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found[0]


def test_keras_weights_stored_in_other_files_are_refused(tmp_path):
    model = identity_model(tmp_path / "model.keras", SIZE)
    assert load_model(model).input_shape == (None, SIZE, SIZE, 1)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(1, np.float32).tobytes())

    def external(weights):
        name = first_dataset(weights)
        shape, dtype = weights[name].shape, weights[name].dtype
        del weights[name]
        weights.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, 4)])

    def soft_link(weights):
        name = first_dataset(weights)
        weights.create_dataset("elsewhere", data=weights[name][()])
        del weights[name]
        weights[name] = h5py.SoftLink("/elsewhere")

    with pytest.raises(InputError, match=r"external.keras: field '.*' uses external storage .*a saved model"):
        load_model(rewrite_weights(model, tmp_path / "external.keras", external))
    with pytest.raises(InputError, match=r"soft.keras: field '.*' is a SoftLink to data elsewhere"):
        load_model(rewrite_weights(model, tmp_path / "soft.keras", soft_link))


def test_a_keras_archive_declaring_a_huge_member_is_refused_before_reading(tmp_path):
    model = identity_model(tmp_path / "model.keras", SIZE)
    with zipfile.ZipFile(model) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = b" " * (17 * 2**20) + members["config.json"]  # 17 MiB, a few kB compressed
    with zipfile.ZipFile(tmp_path / "big.keras", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    assert (tmp_path / "big.keras").stat().st_size < 200_000
    with pytest.raises(InputError, match=r"big.keras: its member config.json declares 17 MiB, more than the 16 MiB"):
        load_model(tmp_path / "big.keras")


def test_a_model_declaring_a_huge_input_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((20000, 20000, 1)), keras.layers.Conv2D(1, 1)])
    model.save(tmp_path / "huge.keras")
    with pytest.raises(InputError, match="input of 20000 x 20000 pixels, more than the 4096"):
        segmentation_model(tmp_path / "huge.keras")


def onnx_file(path, inputs=None, external=False):
    """A small ONNX model image (N, 8, 8, 1) -> mask = Identity(first input), saved to `path`; with `external`,
    an initializer whose bytes are to be read from another file."""
    inputs = inputs or [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 1])]
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [1], [0.0])
    if external:  # the tensor's bytes to be read from another file, as onnx writes large models
        bias.ClearField("float_data")
        bias.data_location = TensorProto.EXTERNAL
        bias.external_data.add(key="location", value="../../../../etc/passwd")
        bias.external_data.add(key="length", value="4")
    output = helper.make_tensor_value_info("mask", inputs[0].type.tensor_type.elem_type, None)
    graph = helper.make_graph([helper.make_node("Identity", [inputs[0].name], ["mask"])], "g", inputs, [output],
                              [bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_an_onnx_file_with_external_data_is_refused_before_onnxruntime_sees_it(tmp_path):
    model = OnnxModel(onnx_file(tmp_path / "plain.onnx"))
    assert model.input_shape == (None, 8, 8, 1)
    with pytest.raises(InputError, match="external.onnx: its weights name external data"):
        OnnxModel(onnx_file(tmp_path / "external.onnx", external=True))


@pytest.mark.parametrize("inputs", [
    [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8, 8, 1]),
     helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8, 8, 1])],
    [helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 8, 8, 1])],
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8])],
])
def test_an_onnx_graph_that_is_not_one_image_input_is_refused(tmp_path, inputs):
    with pytest.raises(InputError, match="odd.onnx: inputs .* are not this project's one float image input"):
        OnnxModel(onnx_file(tmp_path / "odd.onnx", inputs))


def test_an_onnx_model_declaring_a_huge_input_is_refused(tmp_path):
    huge = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 100000, 100000, 1])]
    with pytest.raises(InputError, match="huge.onnx: input of 100000 x 100000 pixels, more than the 4096"):
        segmentation_model(onnx_file(tmp_path / "huge.onnx", huge))


def test_a_folder_or_a_missing_file_is_named_for_what_it_is(tmp_path):
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(InputError, match="folder.onnx: not a regular file"):
        OnnxModel(tmp_path / "folder.onnx")
    with pytest.raises(InputError, match="none.onnx: ONNX model not found"):
        OnnxModel(tmp_path / "none.onnx")
    folder = model_folder(tmp_path / "exported", identity_model(tmp_path / "model.keras", SIZE))
    (folder / "model.keras").unlink()
    (folder / "model.onnx").write_bytes(b"\xff" * 100)
    with pytest.raises(InputError, match="model.onnx: not an ONNX model"):
        Segmenter.load(folder)


def test_weights_whose_groups_link_in_a_loop_are_checked_once(tmp_path):
    model = identity_model(tmp_path / "model.keras", SIZE)
    looped = rewrite_weights(model, tmp_path / "looped.keras", lambda weights: weights["layers"].__setitem__(
        "back", weights["layers"]))  # a hard link from a group to itself
    assert load_model(looped).input_shape == (None, SIZE, SIZE, 1)
