"""train.strategy=mirrored on two logical CPU devices (a subprocess: devices must be set before TensorFlow starts)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf, yaml
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.helpers import write_tiny_dataset
    from tumorseg.train import get_strategy, train

    out = sys.argv[1]
    size = 32
    write_tiny_dataset(out, size)
    params = yaml.safe_load(open("params.yaml"))
    params["data"]["image_size"] = size
    params["model"].update(depth=2, filters=4)
    params["train"].update(epochs=2, batch_size=8, strategy="mirrored")
    metrics = train(params, f"{out}/numpy", f"{out}/split.csv", f"{out}/model.keras", f"{out}/train.json",
                    f"{out}/plots", f"{out}/work")
    print(json.dumps({"replicas": get_strategy("mirrored").num_replicas_in_sync, "epochs": metrics["epochs"]}))
    """
)


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"replicas": 2, "epochs": 2}
    assert (tmp_path / "model.keras").exists() and (tmp_path / "train.json").exists()
