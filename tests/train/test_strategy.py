"""Distribution strategies, each in subprocesses (devices and clusters must be set before TensorFlow starts):
mirrored on two logical CPU devices, multiworker as two worker processes on 127.0.0.1."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers import write_tiny_dataset
from tumorseg.train.multiworker import cluster_task

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.helpers import make_params, write_tiny_dataset
    from tumorseg.train.devices import get_strategy
    from tumorseg.train.loop import TrainPaths, train

    out = sys.argv[1]
    size = 32
    write_tiny_dataset(out, size)
    params = make_params({"data.image_size": size, "model": {"depth": 2, "filters": 4},
                          "train": {"epochs": 2, "batch_size": 8, "strategy": "mirrored"}})
    metrics = train(params, TrainPaths.under(out))
    print(json.dumps({"replicas": get_strategy("mirrored").num_replicas_in_sync, "epochs": metrics["epochs"]}))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"replicas": 2, "epochs": 2}
    assert (tmp_path / "model.keras").exists() and (tmp_path / "train.json").exists()


WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keras
    from tests.helpers import StopAtEpoch, make_params
    from tumorseg.train.loop import TrainPaths, train

    data, out, strategy, stop_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class LastLogs(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs_run = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs_run.append(epoch)
            self.logs = {key: float(value) for key, value in logs.items()}

    params = make_params({"data.image_size": 32, "model": {"depth": 2, "filters": 4},
                          "train": {"epochs": 2, "batch_size": 4, "strategy": strategy}})
    last = LastLogs()
    callbacks = [last] + ([StopAtEpoch(stop_after)] if stop_after >= 0 else [])
    metrics = train(params, TrainPaths.under(out, f"{data}/numpy", f"{data}/split.csv"), extra_callbacks=callbacks)
    print(json.dumps({"epochs": metrics["epochs"], "epochs_run": last.epochs_run, "loss": last.logs["loss"],
                      "val_loss": last.logs["val_loss"]}))
    """
)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_training(data, outs, tf_configs, stop_after=-1):
    """Train in one process per output folder (at once, as on several machines): (stdout, stderr, exit code) of each.

    Logs go to files beside each output folder, so a chatty process cannot block on a full pipe."""
    processes = []
    for out, tf_config in zip(outs, tf_configs):
        env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
        env.update({"CUDA_VISIBLE_DEVICES": "-1", **({"TF_CONFIG": json.dumps(tf_config)} if tf_config else {})})
        strategy = "multiworker" if tf_config else "default"
        logs = out.with_name(f"{out.name}.stdout"), out.with_name(f"{out.name}.stderr")
        with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-c", WORKER_SCRIPT, str(data), str(out), strategy, str(stop_after)],
                cwd=REPO, env=env, stdout=stdout, stderr=stderr,
            )
        processes.append((process, logs))
    try:
        for process, _ in processes:
            process.wait(timeout=300)
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
    return [(logs[0].read_text(), logs[1].read_text(), process.returncode) for process, logs in processes]


def run_cluster(data, root, stop_after=-1):
    """Two workers on 127.0.0.1, each with its own output folder (as on two machines): their outputs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    tf_configs = [{"cluster": cluster, "task": {"type": "worker", "index": index}} for index in range(2)]
    return run_training(data, [root / "worker0", root / "worker1"], tf_configs, stop_after)


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_multiworker_trains_like_one_process_and_only_the_chief_writes(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=32, patients=16)  # 24 train, 12 val slices: full batches of 4
    [(stdout, stderr, returncode)] = run_training(data, [tmp_path / "single"], [None])
    assert returncode == 0, stderr[-3000:]
    reference = last_json(stdout)

    results = run_cluster(data, tmp_path)
    for stdout, stderr, returncode in results:
        assert returncode == 0, stderr[-3000:]
    chief, other = (last_json(stdout) for stdout, _, _ in results)
    assert chief == other and chief["epochs"] == 2  # one synchronous training seen from both workers
    assert chief["loss"] == pytest.approx(reference["loss"], rel=0.02)
    assert chief["val_loss"] == pytest.approx(reference["val_loss"], rel=0.02)

    chief_dir, other_dir = tmp_path / "worker0", tmp_path / "worker1"
    assert (chief_dir / "train.json").exists() and (chief_dir / "plots").is_dir()
    model = keras.models.load_model(chief_dir / "model.keras", compile=False)
    images = np.load(data / "numpy" / "images.npy")[:2, :, :, None]
    assert model.predict(images, verbose=0).shape == (2, 32, 32, 1)
    assert not other_dir.exists() or list(other_dir.iterdir()) == []  # its scratch folder is removed


@pytest.mark.slow
def test_interrupted_workers_resume_from_their_own_backups(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=32, patients=16)
    for _, stderr, returncode in run_cluster(data, tmp_path, stop_after=0):
        assert returncode != 0 and "simulated Ctrl-C after epoch 0" in stderr
    backup = tmp_path / "worker1" / "work-worker1"
    assert (tmp_path / "worker0" / "work").is_dir() and backup.is_dir()

    backup.rename(tmp_path / "kept")  # worker 1 lost its backup: both refuse to start from different epochs
    for _, stderr, returncode in run_cluster(data, tmp_path):
        assert returncode != 0 and "resume from different epochs ([1, -1]" in stderr
    shutil.rmtree(backup)
    (tmp_path / "kept").rename(backup)

    results = run_cluster(data, tmp_path)
    for stdout, stderr, returncode in results:
        assert returncode == 0, stderr[-3000:]
        assert "resuming the interrupted run" in stdout
        assert last_json(stdout)["epochs"] == 2 and last_json(stdout)["epochs_run"] == [1]
    assert (tmp_path / "worker0" / "model.keras").exists() and not (tmp_path / "worker1" / "work-worker1").exists()


@pytest.mark.parametrize("tf_config, message", [
    (None, "reads the cluster from the TF_CONFIG"),
    ("{not json", "not a valid cluster description"),
    ('{"cluster": {"worker": ["a:1"]}}', "not a valid cluster description"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}', "not ['ps']"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "is not in the cluster"),
])
@pytest.mark.slow
def test_bad_cluster_descriptions_are_rejected(monkeypatch, tf_config, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=re.escape(message)):
        cluster_task()


@pytest.mark.slow
def test_the_chief_is_the_chief_task_or_else_worker_zero():
    workers = '{"cluster": {"worker": ["a:1", "b:1"]%s}, "task": {"type": "%s", "index": %d}}'
    assert cluster_task(workers % ("", "worker", 0)).chief
    assert not cluster_task(workers % ("", "worker", 1)).chief
    assert not cluster_task(workers % (', "chief": ["c:1"]', "worker", 0)).chief
    assert cluster_task(workers % (', "chief": ["c:1"]', "chief", 0)).chief
