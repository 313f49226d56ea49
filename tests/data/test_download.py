"""Offline tests of the download stage against a local HTTP server."""

import hashlib
import io
import os
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tumorseg.config import Synthetic
from tumorseg.data import archives, fetch
from tumorseg.data.archives import ArchiveError, SourceError
from tumorseg.data.fetch import DownloadError, RemoteFile, check_base_url, download_file
from tumorseg.data.matfile import Slice, read_slice, write_slice
from tumorseg.data.sources import format_ranges, prepare_raw

# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def mat_bytes(tmp_path_factory):
    """Bytes of small valid slices 1..4, keyed by file name."""
    folder = tmp_path_factory.mktemp("mats")
    result = {}
    for index in range(1, 5):
        image = np.arange(256, dtype=np.int16).reshape(16, 16) * index
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = 1
        border = np.array([[5.0, 5.0], [8.0, 5.0], [8.0, 8.0]])
        path = folder / f"{index}.mat"
        write_slice(path, Slice(image=image, mask=mask, label=1 + index % 3, pid=f"P{index}", border=border))
        result[path.name] = path.read_bytes()
    result["cvind.mat"] = b"cvind-bytes" * 50
    return result


def make_zip(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


@pytest.fixture
def figshare_zips(mat_bytes):
    """Two zips in the figshare layout (with a folder prefix and clutter to ignore)."""
    return {
        "brainTumorDataPublic_1-2.zip": make_zip({"1.mat": mat_bytes["1.mat"], "2.mat": mat_bytes["2.mat"]}),
        "brainTumorDataPublic_3-4.zip": make_zip({
            "brainTumorDataPublic_3-4/3.mat": mat_bytes["3.mat"],
            "brainTumorDataPublic_3-4/4.mat": mat_bytes["4.mat"],
            "__MACOSX/brainTumorDataPublic_3-4/._3.mat": b"junk",
            "README.txt": b"readme",
        }),
    }


class FakeFigshare:
    """Serves /files/<id> with Range support and scripted failures."""

    def __init__(self):
        self.bodies = {}  # path -> bytes
        self.cut_once = set()  # paths whose first request is cut mid-body
        self.fail_statuses = {}  # path -> list of statuses to answer first
        self.ignore_range = False
        self.redirects = {}  # path -> Location answered with 302
        self.log = []  # (path, Range header or None)

    def add(self, file_id, body):
        self.bodies[f"/files/{file_id}"] = body

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.log.append((self.path, self.headers.get("Range")))
                if self.path in fake.redirects:
                    self.send_response(302)
                    self.send_header("Location", fake.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = fake.bodies.get(self.path)
                pending = fake.fail_statuses.get(self.path)
                if pending:
                    self.send_error(pending.pop(0))
                    return
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if header and not fake.ignore_range:
                    start = int(header.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in fake.cut_once:
                    fake.cut_once.discard(self.path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        return Handler


@pytest.fixture
def server():
    fake = FakeFigshare()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/files"
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def md5(data):
    return hashlib.md5(data).hexdigest()


def publish(server, zips, mat_bytes):
    """Serve the zips and cvind.mat; return their file table."""
    files = []
    bodies = dict(zips, **{"cvind.mat": mat_bytes["cvind.mat"]})
    for file_id, (name, body) in enumerate(bodies.items(), start=100):
        server.add(file_id, body)
        files.append(RemoteFile(name, file_id, md5(body), len(body)))
    return files


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- download

def test_figshare_download_verifies_and_extracts(tmp_path, server, figshare_zips, mat_bytes, capsys):
    files = publish(server, figshare_zips, mat_bytes)
    out_dir = tmp_path / "data" / "raw"
    prepare_raw("figshare", out_dir, server.base_url, files=files, backoff=0)

    assert names(out_dir) == ["1.mat", "2.mat", "3.mat", "4.mat", "cvind.mat"]
    assert all((out_dir / name).read_bytes() == mat_bytes[name] for name in names(out_dir))
    assert read_slice(out_dir / "3.mat").pid == "P3"
    assert not [p for p in tmp_path.rglob("*.part")]
    assert names(tmp_path / "data" / "downloads") == sorted(f.name for f in files)
    assert "found 4 slices; missing 5-3064" in capsys.readouterr().out

    requests_before = len(server.log)
    prepare_raw("figshare", out_dir, server.base_url, files=files, backoff=0)
    assert len(server.log) == requests_before  # verified files are not fetched again
    assert names(out_dir) == ["1.mat", "2.mat", "3.mat", "4.mat", "cvind.mat"]


def test_cut_connection_resumes_on_next_run(tmp_path, server):
    body = bytes(range(256)) * 4096
    server.add(7, body)
    server.cut_once.add("/files/7")
    url, dest = f"{server.base_url}/7", tmp_path / "big.zip"

    with pytest.raises(DownloadError) as error:
        download_file(url, dest, md5(body), len(body), retries=0, backoff=0)
    assert url in str(error.value) and "resumes" in str(error.value)
    part = tmp_path / "big.zip.part"
    offset = part.stat().st_size
    assert 0 < offset < len(body) and not dest.exists()

    download_file(url, dest, md5(body), len(body), retries=0, backoff=0)
    assert server.log[-1] == ("/files/7", f"bytes={offset}-")
    assert dest.read_bytes() == body and not part.exists()


def test_cut_connection_resumes_within_retries(tmp_path, server):
    body = b"x" * 500_000 + b"y" * 500_000
    server.add(8, body)
    server.cut_once.add("/files/8")
    dest = download_file(f"{server.base_url}/8", tmp_path / "f.zip", md5(body), None, retries=2, backoff=0)
    assert dest.read_bytes() == body
    assert [header for _, header in server.log][0] is None
    offset = int(server.log[1][1].removeprefix("bytes=").rstrip("-"))
    assert len(server.log) == 2 and 0 < offset <= 500_000


def test_server_ignoring_range_restarts_the_file(tmp_path, server):
    body = b"abcdef" * 1000
    server.add(9, body)
    server.ignore_range = True
    (tmp_path / "f.zip.part").write_bytes(b"stale partial data")
    dest = download_file(f"{server.base_url}/9", tmp_path / "f.zip", md5(body), len(body), retries=0)
    assert dest.read_bytes() == body


def test_retries_server_errors_then_gives_up(tmp_path, server, monkeypatch):
    body = b"payload" * 100
    server.add(10, body)
    server.fail_statuses["/files/10"] = [503, 429]
    delays = []
    monkeypatch.setattr(fetch.time, "sleep", delays.append)
    download_file(f"{server.base_url}/10", tmp_path / "a.zip", md5(body), retries=2, backoff=0.5)
    assert (tmp_path / "a.zip").read_bytes() == body
    assert delays == [0.5, 1.0]

    server.fail_statuses["/files/10"] = [503, 503]
    url = f"{server.base_url}/10"
    with pytest.raises(DownloadError, match="again resumes") as error:
        download_file(url, tmp_path / "b.zip", md5(body), retries=1, backoff=0)
    assert url in str(error.value) and "503" in str(error.value)


def test_a_host_that_does_not_resolve_fails_at_once_with_the_offline_sources(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    delays = []
    monkeypatch.setattr(fetch.time, "sleep", delays.append)
    with pytest.raises(DownloadError, match="ndownloader.figshare.com cannot be resolved") as error:
        download_file("https://ndownloader.figshare.com/files/1", tmp_path / "a.zip", "0" * 32, retries=4)
    assert delays == []  # not retried
    assert "data.source=synthetic" in str(error.value) and "urllib3" not in str(error.value)


def test_missing_file_is_not_retried(tmp_path, server):
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server.base_url}/404", tmp_path / "x.zip", "0" * 32, retries=3, backoff=100)


def test_md5_mismatch_removes_the_file(tmp_path, server):
    body = b"not the published file"
    server.add(11, body)
    wrong = "0123456789abcdef0123456789abcdef"
    with pytest.raises(DownloadError) as error:
        download_file(f"{server.base_url}/11", tmp_path / "c.zip", wrong, retries=0)
    message = str(error.value)
    assert wrong in message and md5(body) in message and "c.zip" in message
    assert all_files(tmp_path) == []


def test_redirect_to_plain_http_is_refused_and_loopback_followed(tmp_path, server):
    body = b"the published file"
    server.add(12, body)
    server.redirects["/files/13"] = "/files/12"  # same loopback server: followed
    assert download_file(f"{server.base_url}/13", tmp_path / "a.zip", md5(body), retries=0).read_bytes() == body
    server.redirects["/files/14"] = "http://example.com/files/12"
    with pytest.raises(DownloadError, match="redirected to http://example.com/files/12, which is not https"):
        download_file(f"{server.base_url}/14", tmp_path / "b.zip", md5(body), retries=3, backoff=100)
    assert all_files(tmp_path) == ["a.zip"]


@pytest.mark.parametrize("url", ["http://example.com/files", "ftp://127.0.0.1/files", "ndownloader.figshare.com"])
def test_non_https_url_rejected(tmp_path, url):
    with pytest.raises(DownloadError, match="https"):
        prepare_raw("figshare", tmp_path / "raw", url, files=[])
    assert not (tmp_path / "raw").exists()


def test_https_and_loopback_http_accepted():
    assert check_base_url("https://ndownloader.figshare.com/files/") == "https://ndownloader.figshare.com/files"
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8080"):
        check_base_url(f"http://{host}/files")


# ---------------------------------------------------------------- zips

def test_corrupt_zip_gives_clear_error(tmp_path, figshare_zips):
    source = tmp_path / "src"
    source.mkdir()
    good = figshare_zips["brainTumorDataPublic_1-2.zip"]
    (source / "brainTumorDataPublic_1-2.zip").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveError, match=r"brainTumorDataPublic_1-2\.zip.*corrupt or truncated.*download it again"):
        prepare_raw(str(source), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("member", ["../evil.mat", "/tmp/evil.mat", "sub/../../5.mat", "C:/evil.mat"])
def test_unsafe_zip_member_rejected(tmp_path, member, mat_bytes):
    source = tmp_path / "src"
    source.mkdir()
    (source / "bad.zip").write_bytes(make_zip({"1.mat": mat_bytes["1.mat"], member: b"evil"}))
    with pytest.raises(ArchiveError, match="unsafe member path"):
        prepare_raw(str(source), tmp_path / "deep" / "raw")
    assert not (tmp_path / "deep" / "raw").exists()
    assert all_files(tmp_path) == ["src/bad.zip"]


# ---------------------------------------------------------------- local folders

def test_local_folder_of_nested_mat_files(tmp_path, mat_bytes, capsys):
    source = tmp_path / "src"
    for rel, name in [("a/1.mat", "1.mat"), ("a/b/2.mat", "2.mat"), ("c/4.mat", "4.mat"), ("cvind.mat", "cvind.mat")]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(mat_bytes[name])
    (source / "notes.mat").write_bytes(b"not a slice")
    prepare_raw(str(source), tmp_path / "raw")
    assert names(tmp_path / "raw") == ["1.mat", "2.mat", "4.mat", "cvind.mat"]
    output = capsys.readouterr().out
    assert "found 3 slices; missing 3, 5-3064" in output
    assert "not tracked: DVC does not see later changes" in output and "dvc repro -f download" in output


def test_local_folder_of_zips(tmp_path, figshare_zips, mat_bytes):
    source = tmp_path / "downloads"
    source.mkdir()
    for name, body in figshare_zips.items():
        (source / name).write_bytes(body)
    (source / "cvind.mat").write_bytes(mat_bytes["cvind.mat"])
    prepare_raw(str(source), tmp_path / "raw")
    assert names(tmp_path / "raw") == ["1.mat", "2.mat", "3.mat", "4.mat", "cvind.mat"]
    assert (tmp_path / "raw" / "4.mat").read_bytes() == mat_bytes["4.mat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "raw"]


def test_local_whole_article_zip(tmp_path, figshare_zips, mat_bytes):
    source = tmp_path / "article"
    source.mkdir()
    (source / "1512427.zip").write_bytes(make_zip(dict(figshare_zips, **{"cvind.mat": mat_bytes["cvind.mat"]})))
    out_dir = tmp_path / "raw"
    out_dir.mkdir()
    (out_dir / "old.mat").write_bytes(b"previous run")
    prepare_raw(str(source), out_dir)
    assert names(out_dir) == ["1.mat", "2.mat", "3.mat", "4.mat", "cvind.mat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["article", "raw"]


def test_nested_zips_of_one_name_and_deeper_nesting_are_all_extracted(tmp_path, mat_bytes):
    source = tmp_path / "src"
    source.mkdir()
    inner_a = make_zip({"1.mat": mat_bytes["1.mat"]})
    inner_b = make_zip({"2.mat": mat_bytes["2.mat"]})
    two_deep = make_zip({"deeper/part.zip": make_zip({"3.mat": mat_bytes["3.mat"]})})
    (source / "a.zip").write_bytes(make_zip({"x/part.zip": inner_a, "y/part.zip": inner_b}))
    (source / "b.zip").write_bytes(make_zip({"part.zip": two_deep, "4.mat": mat_bytes["4.mat"]}))
    prepare_raw(str(source), tmp_path / "raw")
    assert names(tmp_path / "raw") == ["1.mat", "2.mat", "3.mat", "4.mat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "src"]


def test_zips_nested_too_deep_are_an_error_not_skipped(tmp_path, mat_bytes):
    body = make_zip({"1.mat": mat_bytes["1.mat"]})
    for level in range(archives.MAX_ZIP_NESTING + 1):
        body = make_zip({f"level{level}.zip": body})
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "outer.zip").write_bytes(body)
    with pytest.raises(ArchiveError, match="nested more than 3 levels deep"):
        prepare_raw(str(tmp_path / "src"), tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("member", ["7.mat", "inner.zip"])
def test_a_member_expanding_past_the_cap_is_refused(tmp_path, monkeypatch, member):
    monkeypatch.setattr(archives, "MAX_SLICE_BYTES", 1 << 20)
    monkeypatch.setattr(archives, "MAX_NESTED_ZIP_BYTES", 1 << 20)
    (tmp_path / "src").mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, bytes(3 << 20), compress_type=zipfile.ZIP_DEFLATED)
    bomb = buffer.getvalue()
    assert len(bomb) < 20_000  # 3 MB of zeros
    (tmp_path / "src" / "bomb.zip").write_bytes(bomb)
    with pytest.raises(ArchiveError, match=f"bomb.zip:{member}: more than 1 MB"):
        prepare_raw(str(tmp_path / "src"), tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "cvind.mat").write_bytes(b"only cvind")
    with pytest.raises(SourceError, match=r"no N\.mat slice files and no \.zip files"):
        prepare_raw(str(tmp_path / "empty"), tmp_path / "raw")
    with pytest.raises(SourceError, match="nowhere"):
        prepare_raw(str(tmp_path / "nowhere"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_failed_run_keeps_previous_output(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    out_dir = tmp_path / "raw"
    out_dir.mkdir()
    (out_dir / "1.mat").write_bytes(b"previous")
    with pytest.raises(ArchiveError):
        prepare_raw(str(source), out_dir)
    assert names(out_dir) == ["1.mat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "src"]


def test_format_ranges():
    assert format_ranges([]) == ""
    assert format_ranges([7, 1, 2, 3, 5, 8]) == "1-3, 5, 7-8"
    assert format_ranges(range(767, 3065)) == "767-3064"


# ---------------------------------------------------------------- synthetic

def test_synthetic_source_writes_readable_slices(tmp_path):
    options = Synthetic(patients=3, slices_per_patient=2, image_size=32, seed=5)
    prepare_raw("synthetic", tmp_path / "raw", "https://unused", synthetic=options)
    assert names(tmp_path / "raw") == [f"{i}.mat" for i in range(1, 7)] + ["cvind.mat"]
    labels = {read_slice(tmp_path / "raw" / f"{i}.mat").label for i in range(1, 7)}
    assert labels == {1, 2, 3}


def test_synthetic_source_needs_its_params(tmp_path):
    with pytest.raises(SourceError, match="data.synthetic"):
        prepare_raw("synthetic", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "folder"])
def test_a_source_entry_that_is_not_a_regular_file_is_refused(tmp_path, mat_bytes, kind):
    """A link to /dev/zero named 9.mat used to copy until the disk was full."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "1.mat").write_bytes(mat_bytes["1.mat"])
    odd = source / "9.mat"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    else:
        odd.symlink_to("/dev/zero")
    with pytest.raises(SourceError, match=r"9.mat.*not a regular file"):
        prepare_raw(str(source), tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no data/raw, no temporary left


def test_a_link_to_a_regular_file_is_followed(tmp_path, mat_bytes):
    elsewhere = tmp_path / "elsewhere.mat"
    elsewhere.write_bytes(mat_bytes["2.mat"])
    source = tmp_path / "src"
    source.mkdir()
    (source / "2.mat").symlink_to(elsewhere)
    prepare_raw(str(source), tmp_path / "raw")
    assert not (tmp_path / "raw" / "2.mat").is_symlink()
    assert (tmp_path / "raw" / "2.mat").read_bytes() == mat_bytes["2.mat"]


def test_a_loose_file_past_the_size_cap_is_refused(tmp_path, monkeypatch, mat_bytes):
    monkeypatch.setattr(archives, "MAX_SLICE_BYTES", 1 << 10)
    source = tmp_path / "src"
    source.mkdir()
    (source / "3.mat").write_bytes(b"\0" * (2 << 10))
    with pytest.raises(ArchiveError, match=r"3.mat: more than 0 MB"):
        prepare_raw(str(source), tmp_path / "raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
