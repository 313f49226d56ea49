"""One exit convention for every entry point: a project error is one line on stderr and status 1, a usage
error status 2, and no traceback either way (tumorseg.cli)."""

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tumorseg.cli import EXIT_ERROR, EXIT_USAGE, exit_status
from tumorseg.errors import ProjectError

STAGES = ("download", "mat_to_numpy", "split", "train", "evaluate", "render_samples")


def run_module(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


# TensorFlow's C++ start-up log (the CPU-feature notice runs on to a second line)
TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions)")


def assert_one_line(result, name, status, text):
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not TF_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_without_params_fails_in_one_line(tmp_path, stage):
    (tmp_path / "stages").symlink_to(__import__("stages").__path__[0])
    result = run_module(f"stages.{stage}", cwd=tmp_path)
    assert_one_line(result, stage, EXIT_ERROR, "params.yaml")


@pytest.mark.parametrize("module, args, name, text", [
    ("tumorseg.serve.predict", ["scan.png", "--out", "out", "--model", "absent.keras"], "predict", "absent.keras"),
    ("tumorseg.experiments.recipe", ["no-such-recipe"], "recipe", "no such recipe"),
    ("tumorseg.experiments.summarize", ["--json", "absent.json"], "summarize", "absent.json"),
    ("tumorseg.experiments.ensemble_gain", ["only-one"], "ensemble_gain", "a nested study, at least two"),
])
def test_a_command_with_a_bad_input_fails_in_one_line(tmp_path, module, args, name, text):
    (tmp_path / "scan.png").write_bytes(b"")
    assert_one_line(run_module(module, *args, cwd=tmp_path), name, EXIT_ERROR, text)


@pytest.mark.parametrize("module", ["tumorseg.serve.predict", "tumorseg.experiments.recipe",
                                    "tumorseg.experiments.summarize"])
def test_a_usage_error_exits_with_2(tmp_path, module):
    result = run_module(module, "--no-such-option", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE and "Traceback" not in result.stderr


def test_other_errors_keep_their_traceback():
    def broken():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        exit_status("broken", broken)
    assert exit_status("fine", lambda: None) == 0

    def refused():
        raise ProjectError("x.yaml: bad; fix it")

    assert exit_status("refused", refused) == EXIT_ERROR


def test_a_folder_the_machine_will_not_let_it_write_is_one_line(tmp_path, capsys):
    def write_into_read_only():
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out" / "summary.csv"))

    def a_bug():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "internal.tmp")

    assert exit_status("predict", write_into_read_only) == EXIT_ERROR
    assert capsys.readouterr().err == (f"predict: error: {tmp_path}/out/summary.csv: Permission denied; check its "
                                       "permissions and the free space there, then run again.\n")

    def disk_full_while_writing():  # a write into an open file: no file name on the error
        raise OSError(errno.ENOSPC, "No space left on device")

    assert exit_status("mat_to_numpy", disk_full_while_writing) == EXIT_ERROR
    assert capsys.readouterr().err.startswith("mat_to_numpy: error: a file it writes: No space left on device;")
    with pytest.raises(FileNotFoundError):  # any other OSError is a bug and keeps its traceback
        exit_status("predict", a_bug)
