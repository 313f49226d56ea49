"""Write outputs under a temporary name and rename them into place.

An interrupted stage then never leaves a half-written file or folder that
DVC would take for a finished output. An output that is a symbolic link
(e.g. data/raw pointing to a bigger disk) stays a link: its target is
replaced, beside itself. The renamed output gets the
permissions the user's umask gives a new file or folder (the temporary one
is created private, 0600 / 0700).
"""

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _through_link(path):
    """The path to replace: a symbolic link's target (the link is kept), else the path itself."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def remove_stale(path: str | Path) -> None:
    """Remove the temporary files and folders that an interrupted write of `path` left beside it (a process
    killed with -9 cannot clean up; the next write of the same output does). Run by every atomic write."""
    for stale in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*"):
        if stale.name.endswith(".old") or ".tmp" in stale.name:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _usual_permissions(path, folder=False):
    """Give `path` the mode a new file (0666) or folder (0777) gets under the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_file(path: str | Path, follow_link: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success. A symbolic link at `path` is
    followed (its target replaced: DVC may link a pipeline's outputs into its cache) unless `follow_link` is
    False, for outputs into a folder the user chose, where the link itself is replaced and what it points to
    is left alone."""
    path = _through_link(path) if follow_link else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    # the temporary keeps the suffix, for writers that choose the format by it (Keras: .keras)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` on success."""
    path = _through_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _usual_permissions(tmp, folder=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_entries(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success each of its entries replaces the entry of
    the same name in `path` (created if need be), one rename each. Other entries of `path` are kept."""
    path = _through_link(path)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for entry in sorted(tmp.iterdir()):
            target = path / entry.name
            if entry.is_dir():
                _usual_permissions(entry, folder=True)
                old = tmp / f".{entry.name}.old"
                if target.is_dir() and not target.is_symlink():
                    os.replace(target, old)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.replace(entry, target)
            else:
                _usual_permissions(entry)
                os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: object) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
