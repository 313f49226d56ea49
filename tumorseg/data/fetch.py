"""Download the figshare files over HTTPS: resumed where a connection was cut, retried, MD5-checked.

Each file goes to NAME.part and is renamed to NAME only once its MD5 matches the published one; a redirect
to anything but https is refused before it is followed.
"""

import hashlib
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import requests
from tqdm import tqdm

from tumorseg.data.cvind import CVIND
from tumorseg.errors import ProjectError

FIGSHARE_URL = "https://ndownloader.figshare.com/files"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
RETRY_STATUS = {429, 500, 502, 503, 504}
CHUNK_BYTES = 1 << 16  # small: a cut connection loses at most one chunk
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


class _Transient(Exception):
    """A failure worth retrying (cut connection, 5xx, 429)."""


TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Transient)


def unresolvable(error: BaseException) -> bool:
    """Whether a connection error comes from a host name that does not resolve (socket.gaierror somewhere
    in its chain of causes, as urllib3's NameResolutionError wraps it)."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None),
                    *(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))]
    return False


def is_secure(url: str) -> bool:
    """https, or http to a loopback host (tests)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


def check_base_url(base_url: str) -> str:
    """Accept https URLs, and http only to loopback hosts."""
    if is_secure(base_url):
        return base_url.rstrip("/")
    raise DownloadError(f"data.figshare_url {base_url!r} must be an https:// URL (e.g. {FIGSHARE_URL}).")


class HttpsOnlySession(requests.Session):
    """A session that refuses, before following it, a redirect to anything but https (or loopback http)."""

    def get_redirect_target(self, response: requests.Response) -> str | None:
        target = super().get_redirect_target(response)
        if target is not None:
            absolute = urljoin(response.url, target)
            if not is_secure(absolute):
                raise DownloadError(
                    f"{response.url}: the server redirected to {absolute}, which is not https; refused. "
                    "Check data.figshare_url, or download the files yourself and set data.source to their folder."
                )
        return target


def download_files(base_url: str, download_dir: str | Path,
                   files: Iterable[tuple[str, int, str, int | None]] = FIGSHARE_FILES, retries: int = 4,
                   backoff: float = 2.0, timeout: float = TIMEOUT_S) -> list[Path]:
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


def download_file(url: str, dest: str | Path, md5: str, size: int | None = None, retries: int = 4,
                  backoff: float = 2.0, timeout: float = TIMEOUT_S) -> Path:
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
            if unresolvable(error):  # an offline machine: retrying cannot help
                raise DownloadError(
                    f"{url}: the host {urlsplit(url).hostname} cannot be resolved (no network or no DNS here). "
                    "To run offline use -S data.source=synthetic, or a local folder holding the figshare "
                    "files (-S data.source=/path/to/folder)."
                ) from error
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


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
