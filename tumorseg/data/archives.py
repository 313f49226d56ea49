"""Gather slice files safely: copy loose N.mat / cvind.mat files, extract them from (nested) zips.

Members are flattened into the target folder by name; absolute or '..' paths are refused, every
member is copied under a size cap (a zip bomb stops there), and a name found twice must hold the
same bytes.
"""

import filecmp
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tumorseg.data.cvind import CVIND
from tumorseg.data.matfile import SLICE_NAME
from tumorseg.errors import ProjectError

BLOCK_BYTES = 1 << 16
# Extraction caps (a zip bomb stops at the cap): a real slice file is under 2 MB, a figshare inner zip under 300 MB
MAX_SLICE_BYTES = 64 << 20
MAX_NESTED_ZIP_BYTES = 2 << 30
MAX_ZIP_NESTING = 3  # zips inside zips, at most this many levels below the source's own zips


class SourceError(ProjectError, ValueError):
    """A local source that does not hold the expected files."""


class ArchiveError(SourceError):
    """A zip that is corrupt, truncated or unsafe to extract."""


def is_wanted(name: str) -> bool:
    return bool(SLICE_NAME.match(name)) or name == CVIND


def check_regular(path: str | Path) -> Path:
    """`path` itself, or the file a symbolic link points to; SourceError unless that is a regular file (a
    folder, FIFO or device named N.mat, or a link to one, e.g. to /dev/zero, is refused)."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        what = ("a folder" if resolved.is_dir() else "missing" if not resolved.exists()
                else "a FIFO, socket or device")
        via = f" (a link to {resolved})" if Path(path).is_symlink() else ""
        raise SourceError(f"{path}{via}: {what}, not a regular file; a source holds slice files only: "
                          "remove it or replace it with the file itself.")
    return resolved


def copy_loose(paths: Iterable[Path], build: Path) -> None:
    """Copy N.mat / cvind.mat files into build, each under the size cap of a zip member; a symbolic link is
    followed to the regular file it names; identical duplicates are skipped."""
    origins = {}
    for path in paths:
        source = check_regular(path)
        target = build / path.name
        if target.exists():
            if filecmp.cmp(source, target, shallow=False):
                continue
            raise SourceError(f"{path.name} found twice with different contents: {origins.get(path.name)} and {path}; keep one.")
        with open(source, "rb") as src, open(target, "wb") as dst:
            _copy_capped(src, dst, MAX_SLICE_BYTES, str(path))
        origins[path.name] = path


def extract_zips(zips: Iterable[str | Path], build: Path) -> None:
    """Extract N.mat members of zips, and of the zips nested inside them, into build."""
    with tempfile.TemporaryDirectory(dir=build.parent, prefix=f".{build.name}.nested.") as nested_dir:
        pending = [(Path(zip_path), str(zip_path), 0) for zip_path in zips]
        while pending:
            zip_path, origin, depth = pending.pop(0)
            for inner, name in extract_zip(zip_path, build, nested_dir=Path(nested_dir), origin=origin):
                if depth + 1 > MAX_ZIP_NESTING:
                    raise ArchiveError(
                        f"{origin}:{name}: zips nested more than {MAX_ZIP_NESTING} levels deep; "
                        "extract the outer ones yourself and point data.source at the result."
                    )
                pending.append((inner, f"{origin}:{name}", depth + 1))
            if depth:
                zip_path.unlink()


def extract_zip(zip_path: str | Path, target: str | Path, nested_dir: str | Path | None = None,
                origin: str | None = None) -> list[tuple[Path, str]]:
    """Flatten N.mat and cvind.mat members into target; return the nested zips copied to nested_dir.

    Each nested zip comes back as (path in nested_dir, member name); the copies
    get unique names, so two nested zips of the same name are both kept.
    Without nested_dir a nested zip is an error, never skipped silently.
    """
    origin = origin or str(zip_path)
    nested = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in _safe_members(archive, origin):
                name = PurePosixPath(info.filename.replace("\\", "/")).name
                if is_wanted(name):
                    _extract_member(archive, info, Path(target) / name, origin)
                elif name.lower().endswith(".zip"):
                    if nested_dir is None:
                        raise ArchiveError(f"{origin}: holds the zip {info.filename!r}; extract it first.")
                    fd, copy = tempfile.mkstemp(dir=nested_dir, suffix=f"-{name}")
                    with archive.open(info) as src, open(fd, "wb") as dst:
                        _copy_capped(src, dst, MAX_NESTED_ZIP_BYTES, f"{origin}:{info.filename}")
                    nested.append((Path(copy), name))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise ArchiveError(
            f"{origin}: not a readable zip ({error}); it is corrupt or truncated: "
            "delete it and download it again."
        ) from error
    return nested


def _copy_capped(src, dst, limit, what):
    """Copy src to dst; ArchiveError when more than `limit` bytes come out (a zip bomb, whatever it declares,
    or a file far larger than any slice)."""
    copied = 0
    for block in iter(lambda: src.read(BLOCK_BYTES), b""):
        copied += len(block)
        if copied > limit:
            raise ArchiveError(
                f"{what}: more than {limit >> 20} MB, far more than any file of the dataset; refusing to "
                "copy it (a damaged or malicious file or zip): use the original figshare download."
            )
        dst.write(block)


def _safe_members(archive, origin):
    """Members that are files; reject any absolute or '..' path."""
    members = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ArchiveError(
                f"{origin}: unsafe member path {info.filename!r} (absolute or containing '..'); "
                "refusing to extract this zip: use the original figshare download."
            )
        if not info.is_dir() and "__MACOSX" not in parts:
            members.append(info)
    return members


def _extract_member(archive, info, target, origin):
    if target.exists():
        if zlib.crc32(target.read_bytes()) == info.CRC:
            return
        raise SourceError(f"{target.name} found twice with different contents (again in {origin}); keep one source.")
    # a refused member leaves a partial file, but in the build folder that the failed stage discards whole
    with archive.open(info) as src, open(target, "wb") as dst:
        _copy_capped(src, dst, MAX_SLICE_BYTES, f"{origin}:{info.filename}")
