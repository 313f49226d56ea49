"""Atomic outputs: renamed into place whole, with the permissions the umask gives."""

import os
import stat

import pytest

from tumorseg.atomic import atomic_dir, atomic_file


@pytest.fixture
def umask():
    def set_umask(value):
        os.umask(value)

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "value, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
)
def test_outputs_get_the_permissions_of_the_umask(tmp_path, umask, value, file_mode, dir_mode):
    umask(value)
    with atomic_file(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    with atomic_dir(tmp_path / "plots") as tmp:
        (tmp / "a.csv").write_text("x\n")
    assert mode(tmp_path / "out.json") == file_mode
    assert mode(tmp_path / "plots") == dir_mode


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path):
    (tmp_path / "out.json").write_text("old")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.csv").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "out.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "plots") as tmp:
            (tmp / "b.csv").write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "out.json").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["a.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "plots"]


def test_a_symlinked_output_stays_a_link_and_its_target_is_replaced(tmp_path):
    (tmp_path / "big" / "raw").mkdir(parents=True)
    (tmp_path / "big" / "raw" / "old.mat").write_text("old")
    (tmp_path / "big" / "train.json").write_text("old")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").symlink_to(tmp_path / "big" / "raw")
    (tmp_path / "data" / "train.json").symlink_to(tmp_path / "big" / "train.json")
    with atomic_dir(tmp_path / "data" / "raw") as tmp:
        (tmp / "1.mat").write_text("new")
    with atomic_file(tmp_path / "data" / "train.json") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "data" / "raw").is_symlink() and (tmp_path / "data" / "train.json").is_symlink()
    assert sorted(p.name for p in (tmp_path / "big" / "raw").iterdir()) == ["1.mat"]
    assert (tmp_path / "big" / "train.json").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["raw", "train.json"]


def test_a_write_removes_what_an_interrupted_one_left(tmp_path):
    """kill -9 leaves .NAME.*.tmp beside the output; the next write of that output removes it."""
    (tmp_path / ".numpy.abc123.tmp").mkdir()
    (tmp_path / ".numpy.abc123.tmp" / "images.npy").write_bytes(b"\0" * 100)
    (tmp_path / ".numpy.old").mkdir()
    (tmp_path / ".model.keras.x1.tmp.keras").write_bytes(b"partial")
    (tmp_path / ".numpy-notes").write_text("not ours")
    with atomic_dir(tmp_path / "numpy") as tmp:
        (tmp / "images.npy").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.keras.x1.tmp.keras", ".numpy-notes", "numpy"]
    with atomic_file(tmp_path / "model.keras") as tmp:
        tmp.write_bytes(b"model")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".numpy-notes", "model.keras", "numpy"]
