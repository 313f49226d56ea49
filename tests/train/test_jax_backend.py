"""The train stage under KERAS_BACKEND=jax where TensorFlow cannot be imported (as on a GPU image without
it); the model it saves loads and predicts under TensorFlow. Needs jax (pip install -r requirements-backends.txt)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tests.helpers import make_params, write_tiny_dataset

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install -r requirements-backends.txt)"
)]
REPO = Path(__file__).resolve().parents[2]

TRAIN = """
import sys


class NoTensorFlow:  # as on a GPU image without TensorFlow: importing it fails
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ImportError(f"no module named {name!r} (blocked by the test)")


sys.meta_path.insert(0, NoTensorFlow())
import json
from tumorseg.config import load_params
from tumorseg.train.loop import TrainPaths, train
params = load_params(sys.argv[1])
root = sys.argv[2]
metrics = train(params, TrainPaths.under(root))
import keras
print(json.dumps({"backend": keras.backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def test_train_under_jax_and_predict_under_tensorflow(tmp_path):
    write_tiny_dataset(tmp_path, size=32)
    params = make_params({"data.image_size": 32, "model": {"depth": 2, "filters": 4},
                          "train": {"epochs": 2, "batch_size": 8, "augment": {"rotation": 10.0, "zoom": 0.1, "contrast": 0.2}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "params.yaml"), str(tmp_path)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"backend": "jax", "tensorflow_imported": False}
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["epochs"] == 2 and 1 <= saved["best_epoch"] <= 2
    assert (tmp_path / "plots" / "metrics" / "eval" / "dice.tsv").is_file()

    assert keras.backend.backend() == "tensorflow"
    model = keras.models.load_model(tmp_path / "model.keras")
    images = np.load(tmp_path / "numpy" / "images.npy")[:4, ..., None]
    probabilities = np.asarray(model.predict(images, verbose=0))
    assert probabilities.shape == (4, 32, 32, 1) and np.all((0 <= probabilities) & (probabilities <= 1))
