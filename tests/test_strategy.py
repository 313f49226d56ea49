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
    import numpy as np, tensorflow as tf, yaml
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tumorseg.split import assign_subsets, write_split
    from tumorseg.train import get_strategy, train

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    count, size = 36, 32
    masks = np.zeros((count, size, size), np.uint8)
    for i in range(count):
        row, col = rng.integers(8, 24, 2)
        masks[i, row - 4 : row + 4, col - 4 : col + 4] = 1
    images = rng.random((count, size, size), dtype=np.float32) * 0.3 + 0.6 * masks
    pids = np.repeat([f"{100 + p}" for p in range(12)], 3)
    labels = np.repeat(np.arange(12) % 3 + 1, 3).astype(np.uint8)
    ids = np.arange(1, count + 1, dtype=np.int32)
    for name, array in dict(images=images, masks=masks, labels=labels, pids=pids, ids=ids).items():
        (__import__("pathlib").Path(out) / "numpy").mkdir(exist_ok=True)
        np.save(f"{out}/numpy/{name}.npy", array)
    write_split(ids, pids, labels, assign_subsets(pids, labels, val=0.25, test=0.25), f"{out}/split.csv")
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
