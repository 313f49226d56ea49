"""Fetch or gather the figshare slices into data/raw/ (one N.mat per slice).

Sources: "figshare" (download the four zips and cvind.mat, MD5-checked,
resumable), "synthetic" (generated slices), or a local folder of N.mat files
or of the downloaded zips. The output folder is built aside and renamed into
place only when complete.
"""

import filecmp
import hashlib
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import requests
from tqdm import tqdm

from tumorseg.atomic import atomic_dir
from tumorseg.cvind import CVIND
from tumorseg.errors import ProjectError
from tumorseg.matfile import SLICE_NAME
from tumorseg.synthetic import write_dataset

FIGSHARE_URL = "https://ndownloader.figshare.com/files"
TOTAL_SLICES = 3064
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
RETRY_STATUS = {429, 500, 502, 503, 504}
CHUNK_BYTES = 1 << 16  # small: a cut connection loses at most one chunk
# Extraction caps (a zip bomb stops at the cap): a real slice file is under 2 MB, a figshare inner zip under 300 MB
MAX_SLICE_BYTES = 64 << 20
MAX_NESTED_ZIP_BYTES = 2 << 30
MAX_ZIP_NESTING = 3  # zips inside zips, at most this many levels below the source's own zips
TIMEOUT_S = 60


class RemoteFile(NamedTuple):
    name: str
    file_id: int
    md5: str
    size: int | None


FIGSHARE_FILES = (
    RemoteFile("brainTumorDataPublic_1-766.zip", 3381290, "74b949ad33f042e6e103523091cd1428", 214401279),
    RemoteFile("brainTumorDataPublic_767-1532.zip", 3381296, "7e8a875500d2c8a346f270538e29890e", 217848429),
    RemoteFile("brainTumorDataPublic_1533-2298.zip", 3381293, "8227bf6080cb71f15a88be8d25c79ae7", 215563856),
    RemoteFile("brainTumorDataPublic_2299-3064.zip", 3381302, "b378a80d6174e5317d59eb28430c6652", 231679762),
    RemoteFile(CVIND, 7005344, "5ea82eb3212c9fcb84290ccf0beb486d", 5736),
)


class DownloadError(ProjectError, RuntimeError):
    """A download that failed or did not match its published MD5."""


class SourceError(ProjectError, ValueError):
    """A local source that does not hold the expected files."""


class ArchiveError(SourceError):
    """A zip that is corrupt, truncated or unsafe to extract."""


class _Transient(Exception):
    """A failure worth retrying (cut connection, 5xx, 429)."""


TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Transient)


# ---------------------------------------------------------------- entry point

def prepare_raw(source, out_dir, base_url=FIGSHARE_URL, synthetic=None, download_dir=None,
                *, files=FIGSHARE_FILES, retries=4, backoff=2.0):
    """Fill `out_dir` with N.mat slices (plus cvind.mat) from `source`, atomically.

    `synthetic` (data.synthetic, a tumorseg.config.Synthetic) sizes the generated data of source 'synthetic'.
    """
    out_dir = Path(out_dir)
    if source == "synthetic":
        if synthetic is None:
            raise ValueError("data.source 'synthetic' needs the data.synthetic settings of params.yaml.")
        with atomic_dir(out_dir) as build:
            write_dataset(build, synthetic.patients, synthetic.slices_per_patient, synthetic.image_size,
                          seed=synthetic.seed)
        return out_dir
    if source == "figshare":
        download_dir = Path(download_dir) if download_dir else out_dir.parent / "downloads"
        paths = download_files(base_url, download_dir, files=files, retries=retries, backoff=backoff)
        zips = [p for p in paths if p.suffix.lower() == ".zip"]
        loose = [p for p in paths if p.suffix.lower() != ".zip"]
        with atomic_dir(out_dir) as build:
            _extract_zips(zips, build)
            _copy_loose(loose, build)
            report_slices(_slice_indices(build))
        return out_dir
    return _prepare_local(Path(source).expanduser(), out_dir)


def _prepare_local(source, out_dir):
    """Copy N.mat files found under source, or else extract the zips found there."""
    if not source.is_dir():
        raise SourceError(
            f"data.source {str(source)!r} is not 'figshare', 'synthetic' or an existing folder; "
            "give a folder of N.mat slice files or of the downloaded figshare zips."
        )
    mats = [p for p in sorted(source.rglob("*.mat")) if _is_wanted(p.name) and "__MACOSX" not in p.parts]
    zips = sorted(p for p in source.rglob("*.zip") if "__MACOSX" not in p.parts)
    if not any(SLICE_NAME.match(p.name) for p in mats) and not zips:
        raise SourceError(
            f"{source}: no N.mat slice files and no .zip files found; expected the figshare slices "
            "(1.mat ... 3064.mat, searched recursively) or the downloaded zips "
            "(brainTumorDataPublic_*.zip or the whole-article zip)."
        )
    with atomic_dir(out_dir) as build:
        if any(SLICE_NAME.match(p.name) for p in mats):
            if zips:
                print(f"{source}: using the N.mat files found; ignoring {len(zips)} zip file(s).")
            _copy_loose(mats, build)
        else:
            _extract_zips(zips, build)
            _copy_loose([p for p in mats if p.name == CVIND], build)
        report_slices(_slice_indices(build))
    return out_dir


# ---------------------------------------------------------------- reporting

def format_ranges(indices):
    """Summarise integers as ranges: [1, 2, 3, 7] -> "1-3, 7"."""
    runs = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def report_slices(indices, total=TOTAL_SLICES):
    """Print how many slices were found and which of 1..total are missing."""
    indices = set(indices)
    missing = set(range(1, total + 1)) - indices
    line = f"found {len(indices)} slices"
    line += f"; missing {format_ranges(missing)}" if missing else f"; all {total} present"
    extra = sorted(i for i in indices if i > total)
    if extra:
        line += f"; beyond {total}: {format_ranges(extra)}"
    print(line)
    if not indices:
        raise SourceError("no N.mat slices found in the source; nothing to write to data/raw.")
    return sorted(missing)


def _slice_indices(folder):
    return [int(m.group(1)) for p in Path(folder).iterdir() if (m := SLICE_NAME.match(p.name))]


def _is_wanted(name):
    return bool(SLICE_NAME.match(name)) or name == CVIND


# ---------------------------------------------------------------- download

def is_secure(url):
    """https, or http to a loopback host (tests)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


def check_base_url(base_url):
    """Accept https URLs, and http only to loopback hosts."""
    if is_secure(base_url):
        return base_url.rstrip("/")
    raise ValueError(f"data.figshare_url {base_url!r} must be an https:// URL (e.g. {FIGSHARE_URL}).")


class HttpsOnlySession(requests.Session):
    """A session that refuses, before following it, a redirect to anything but https (or loopback http)."""

    def get_redirect_target(self, response):
        target = super().get_redirect_target(response)
        if target is not None:
            absolute = urljoin(response.url, target)
            if not is_secure(absolute):
                raise DownloadError(
                    f"{response.url}: the server redirected to {absolute}, which is not https; refused. "
                    "Check data.figshare_url, or download the files yourself and set data.source to their folder."
                )
        return target


def download_files(base_url, download_dir, files=FIGSHARE_FILES, retries=4, backoff=2.0, timeout=TIMEOUT_S):
    """Download each (name, file_id, md5, size) to download_dir/name; return the paths."""
    base_url = check_base_url(base_url)
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in files:
        entry = RemoteFile(*entry)
        url = f"{base_url}/{entry.file_id}"
        paths.append(download_file(url, download_dir / entry.name, entry.md5, entry.size,
                                   retries=retries, backoff=backoff, timeout=timeout))
    return paths


def download_file(url, dest, md5, size=None, retries=4, backoff=2.0, timeout=TIMEOUT_S):
    """Download url to dest via dest.part, resuming and retrying; verify the MD5."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if file_md5(dest) == md5:
            return dest
        print(f"{dest}: MD5 differs from the published {md5}; downloading it again.")
        dest.unlink()
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, size, timeout)
            break
        except TRANSIENT as error:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(
                    f"{url}: download of {dest.name} failed after {retries + 1} attempt(s) ({error}). "
                    f"{kept} bytes are kept in {part}; running the stage again resumes from there."
                ) from error
            delay = backoff * 2 ** attempt
            print(f"{url}: {error}; retrying in {delay:g} s (resuming at byte {kept}).")
            time.sleep(delay)
    actual = file_md5(part)
    if actual != md5:
        part.unlink()
        raise DownloadError(
            f"{dest.name} ({url}): MD5 mismatch: expected {md5}, got {actual}. The bad file was removed; "
            "run the stage again to download it afresh, or check the file table if figshare changed the file."
        )
    os.replace(part, dest)
    return dest


def _fetch(url, part, size, timeout):
    """One request: append to part from its current size (or restart on 200)."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with HttpsOnlySession() as session, session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status == 416:
            part.unlink(missing_ok=True)
            raise _Transient(f"server refused to resume at byte {offset}; restarting the file")
        if status in RETRY_STATUS or status >= 500:
            raise _Transient(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise DownloadError(f"{url}: HTTP {status} {response.reason}; check data.figshare_url and the file id.")
        if status == 206 and _range_start(response) != offset:
            part.unlink(missing_ok=True)
            raise _Transient("server resumed at an unexpected offset; restarting the file")
        if status == 200:
            offset = 0  # the server ignored Range: start the file again
        length = response.headers.get("Content-Length")
        end = offset + int(length) if length else size
        with open(part, "ab" if offset else "wb") as f, tqdm(
            total=end, initial=offset, desc=part.name[: -len(".part")],
            unit="B", unit_scale=True, unit_divisor=1024,
        ) as bar:
            for chunk in response.iter_content(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))
    written = part.stat().st_size
    if end is not None and written < end:
        raise _Transient(f"connection closed after {written} of {end} bytes")


def _range_start(response):
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def file_md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- extraction

def _copy_loose(paths, build):
    """Copy N.mat / cvind.mat files into build; identical duplicates are skipped."""
    origins = {}
    for path in paths:
        target = build / path.name
        if target.exists():
            if filecmp.cmp(path, target, shallow=False):
                continue
            raise SourceError(f"{path.name} found twice with different contents: {origins.get(path.name)} and {path}; keep one.")
        shutil.copyfile(path, target)
        origins[path.name] = path


def _extract_zips(zips, build):
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


def extract_zip(zip_path, target, nested_dir=None, origin=None):
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
                if _is_wanted(name):
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
    """Copy src to dst; ArchiveError when more than `limit` bytes come out (a zip bomb, whatever it declares)."""
    copied = 0
    for block in iter(lambda: src.read(CHUNK_BYTES), b""):
        copied += len(block)
        if copied > limit:
            raise ArchiveError(
                f"{what}: expands to more than {limit >> 20} MB, far more than any file of the dataset; "
                "refusing to extract it (a damaged or malicious zip): use the original figshare download."
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
