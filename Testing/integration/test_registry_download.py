"""Model downloads against a local HTTP server (127.0.0.1, never the network).

The server serves bytes the test chose and can misbehave on request: send other content, close the
connection early, ignore `Range`, answer 404 or stall. Files are a few KB so the whole module runs in ~1 s.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from automedsam import registry
from automedsam.errors import DownloadError, ModelError, OutputError
from automedsam.registry import ModelFile, ModelRegistry, download_file, partial_path

SIZE = 8192


class FileServer(ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes) in `mode`; records every request's method, path and headers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.mode = "normal"      # normal | truncate | ignore_range | stall
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class RangeHandler(BaseHTTPRequestHandler):
    """GET with single open-ended `Range: bytes=N-` support (206 / 416), plus the server's failure modes."""

    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(("GET", self.path, dict(self.headers)))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        if self.server.mode == "stall":
            time.sleep(2)
            return
        start = self._range_start(body)
        if start is None:
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if self.server.mode == "truncate":
            payload = payload[: len(payload) // 2]       # Content-Length promises more; then the connection closes
        self.wfile.write(payload)

    def _range_start(self, body: bytes) -> int | None:
        """First byte to send (0 without a usable Range); None after answering 416."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match is None or self.server.mode == "ignore_range":
            return 0
        start = int(match.group(1))
        if start >= len(body):
            self.send_error(416, "Range Not Satisfiable")
            return None
        return start

    def do_POST(self) -> None:  # noqa: N802
        self.server.requests.append(("POST", self.path, dict(self.headers)))
        self.send_error(405)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class signature)
        """Keep test output quiet."""


@pytest.fixture
def server() -> Iterator[FileServer]:
    httpd = FileServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "automedsam_home"
    monkeypatch.setenv("AUTOMEDSAM_HOME", str(home))
    return home


@pytest.fixture
def payload() -> bytes:
    return os.urandom(SIZE)


def model_file(data: bytes, *urls: str) -> ModelFile:
    return ModelFile("weights.pth", hashlib.sha256(data).hexdigest(), len(data), tuple(urls))


class ProgressLog:
    """Progress callback recording (done, total) pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


def test_good_download_is_verified_and_moved_into_place(server: FileServer, payload: bytes,
                                                        tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    dest = tmp_path / "cache" / "weights.pth"
    progress = ProgressLog()
    assert download_file(model_file(payload, server.url("/w.pth")), dest, progress) == dest
    assert dest.read_bytes() == payload
    assert not partial_path(dest).exists()
    assert progress.calls[0] == (0, SIZE) and progress.calls[-1] == (SIZE, SIZE)
    assert [d for d, _ in progress.calls] == sorted(d for d, _ in progress.calls)
    [(method, _, headers)] = server.requests
    assert method == "GET" and headers["User-Agent"].startswith("AutoMedSAM/") and "Range" not in headers


def test_registry_downloads_into_automedsam_home(server: FileServer, payload: bytes, tmp_path: Path,
                                                 isolated_cache: Path) -> None:
    server.files["/base.pth"] = payload
    entry = {"id": "tiny", "title": "Tiny", "kind": "base", "encoder": "tinyvit", "input_size": 256,
             "classes": [], "base": None, "license": "Apache-2.0", "source": "test", "default": True,
             "files": [{"name": "base.pth", "sha256": hashlib.sha256(payload).hexdigest(), "size": SIZE,
                        "urls": [server.url("/base.pth")], "package": None}]}
    (tmp_path / "models.json").write_text(json.dumps([entry]))
    models = ModelRegistry.load(tmp_path / "models.json")
    assert models.verify("tiny")[0][2] == "missing"
    path = models.resolve("tiny", download=True)
    assert path == isolated_cache / "models" / "tiny" / "base.pth"
    assert path.read_bytes() == payload
    assert models.resolve("tiny") == path and len(server.requests) == 1      # second call: no network
    assert models.verify("tiny")[0][1:] == (path, "ok")


def test_checksum_mismatch_leaves_nothing_behind(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/w.pth"] = bytes(b ^ 0x55 for b in payload)             # same size, other content
    dest = tmp_path / "weights.pth"
    file = model_file(payload, server.url("/w.pth"))
    with pytest.raises(ModelError) as raised:
        download_file(file, dest)
    assert not isinstance(raised.value, DownloadError)
    message = str(raised.value)
    assert file.sha256 in message and hashlib.sha256(server.files["/w.pth"]).hexdigest() in message
    assert str(dest) in message
    assert list(tmp_path.iterdir()) == []


def test_wrong_announced_size_is_refused_before_reading(server: FileServer, payload: bytes,
                                                        tmp_path: Path) -> None:
    server.files["/w.pth"] = payload + b"extra"
    dest = tmp_path / "weights.pth"
    with pytest.raises(ModelError, match="offers 8,197 bytes"):
        download_file(model_file(payload, server.url("/w.pth")), dest)
    assert list(tmp_path.iterdir()) == []


def test_truncated_response_keeps_the_part_and_the_next_call_resumes(server: FileServer, payload: bytes,
                                                                     tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    server.mode = "truncate"
    dest = tmp_path / "weights.pth"
    file = model_file(payload, server.url("/w.pth"))
    with pytest.raises(DownloadError) as raised:
        download_file(file, dest)
    assert "connection closed after 4,096 of 8,192 bytes" in str(raised.value)
    assert str(dest) in str(raised.value)
    assert partial_path(dest).read_bytes() == payload[: SIZE // 2]
    assert not dest.exists()
    server.mode = "normal"
    progress = ProgressLog()
    download_file(file, dest, progress)
    assert server.requests[-1][2]["Range"] == f"bytes={SIZE // 2}-"
    assert progress.calls[0] == (SIZE // 2, SIZE)
    assert dest.read_bytes() == payload and not partial_path(dest).exists()


def test_resume_from_an_existing_part(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    dest = tmp_path / "weights.pth"
    partial_path(dest).write_bytes(payload[:3000])
    download_file(model_file(payload, server.url("/w.pth")), dest)
    [(_, _, headers)] = server.requests
    assert headers["Range"] == "bytes=3000-"
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_server_ignoring_range_restarts_from_scratch(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    server.mode = "ignore_range"
    dest = tmp_path / "weights.pth"
    partial_path(dest).write_bytes(b"\0" * 3000)          # garbage: kept, it would spoil the checksum
    progress = ProgressLog()
    download_file(model_file(payload, server.url("/w.pth")), dest, progress)
    assert server.requests[0][2]["Range"] == "bytes=3000-"
    assert progress.calls[0] == (0, SIZE)
    assert dest.read_bytes() == payload


def test_part_larger_than_the_file_is_discarded(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    dest = tmp_path / "weights.pth"
    partial_path(dest).write_bytes(os.urandom(SIZE + 10))
    download_file(model_file(payload, server.url("/w.pth")), dest)
    assert "Range" not in server.requests[0][2]
    assert dest.read_bytes() == payload


def test_http_404_names_the_file_and_where_to_place_it(server: FileServer, payload: bytes,
                                                       tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "weights.pth"
    file = model_file(payload, server.url("/missing.pth"))
    with pytest.raises(DownloadError) as raised:
        download_file(file, dest)
    message = str(raised.value)
    for expected in ("'weights.pth'", "8,192 bytes", file.sha256, server.url("/missing.pth"), "HTTP 404",
                     f"place it by hand at:\n  {dest}"):
        assert expected in message
    assert not dest.exists()


def _closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_names_the_file_and_where_to_place_it(payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    url = f"http://127.0.0.1:{_closed_port()}/weights.pth"
    file = model_file(payload, url)
    with pytest.raises(DownloadError) as raised:
        download_file(file, dest, timeout=5)
    message = str(raised.value)
    for expected in ("'weights.pth'", "8,192 bytes", file.sha256, url, "cannot connect", str(dest)):
        assert expected in message


def test_stalled_server_times_out(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    server.mode = "stall"
    started = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download_file(model_file(payload, server.url("/w.pth")), tmp_path / "weights.pth", timeout=0.3)
    assert time.monotonic() - started < 1.9


def test_each_url_is_tried_in_turn(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/mirror.pth"] = payload
    dest = tmp_path / "weights.pth"
    download_file(model_file(payload, server.url("/gone.pth"), server.url("/mirror.pth")), dest)
    assert [path for _, path, _ in server.requests] == ["/gone.pth", "/mirror.pth"]
    assert dest.read_bytes() == payload


def test_full_disk_raises_output_error_before_any_request(server: FileServer, payload: bytes, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/w.pth"] = payload
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(registry.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OutputError, match="Not enough free disk space"):
        download_file(model_file(payload, server.url("/w.pth")), tmp_path / "weights.pth")
    assert server.requests == []


def test_only_get_requests_are_sent(server: FileServer, payload: bytes, tmp_path: Path) -> None:
    server.files["/w.pth"] = payload
    server.mode = "truncate"
    file = model_file(payload, server.url("/w.pth"))
    with pytest.raises(DownloadError):
        download_file(file, tmp_path / "weights.pth")
    server.mode = "normal"
    download_file(file, tmp_path / "weights.pth")
    assert {method for method, _, _ in server.requests} == {"GET"}
    assert all(set(headers) <= {"Host", "User-Agent", "Accept-Encoding", "Range", "Connection"}
               for _, _, headers in server.requests)
