"""ncf_core.download against a local HTTP server serving small, made-up zips (never real MovieLens)."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ncf_core.download import BASE_URL_ENV, DATASETS, MARKER_NAME, DownloadError, download

FAKE_U_DATA = b"1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n"


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Server:
    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fake_100k(server: Server) -> bytes:
    body = make_zip({"ml-100k/u.data": FAKE_U_DATA, "ml-100k/README": b"made up for tests\n"})
    server.files["/movielens/ml-100k.zip"] = body
    return body


def test_download_verifies_and_unpacks(
    server: Server, fake_100k: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ncf_core.download"):
        out = download("ml-100k", tmp_path, base_url=server.base_url, checksum=md5(fake_100k), timeout=5)

    assert out == tmp_path / "ml-100k"
    assert (out / "u.data").read_bytes() == FAKE_U_DATA
    assert (out / MARKER_NAME).is_file()
    assert server.requests == ["/movielens/ml-100k.zip"]
    # Only the dataset dir is left behind: no .part zip, no staging dir.
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k"]
    assert any(r.name == "ncf_core.download" and "verified" in r.getMessage() for r in caplog.records)


def test_sha256_checksum_is_accepted(server: Server, fake_100k: bytes, tmp_path: Path) -> None:
    sha = hashlib.sha256(fake_100k).hexdigest()
    out = download("ml-100k", tmp_path, base_url=server.base_url, checksum=sha, timeout=5)
    assert (out / "u.data").read_bytes() == FAKE_U_DATA


def test_second_call_does_not_download_again(server: Server, fake_100k: bytes, tmp_path: Path) -> None:
    first = download("ml-100k", tmp_path, base_url=server.base_url, checksum=md5(fake_100k), timeout=5)
    second = download("ml-100k", tmp_path, base_url=server.base_url, checksum=md5(fake_100k), timeout=5)
    assert first == second
    assert len(server.requests) == 1


def test_base_url_from_environment(
    server: Server, fake_100k: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, server.base_url + "/")
    download("ml-100k", tmp_path, checksum=md5(fake_100k), timeout=5)
    assert server.requests == ["/movielens/ml-100k.zip"]


@pytest.mark.parametrize("override", [None, "0" * 32], ids=["pinned-md5", "explicit-md5"])
def test_checksum_mismatch_raises_and_cleans_up(
    server: Server, fake_100k: bytes, tmp_path: Path, override: str | None
) -> None:
    dest = tmp_path / "data"
    # Without an override the pinned GroupLens md5 applies, which a made-up zip cannot match.
    expected = override or DATASETS["ml-100k"].md5
    with pytest.raises(DownloadError) as excinfo:
        download("ml-100k", dest, base_url=server.base_url, checksum=override, timeout=5)

    message = str(excinfo.value)
    assert expected in message
    assert md5(fake_100k) in message
    assert f"{server.base_url}/ml-100k.zip" in message
    assert list(dest.iterdir()) == []


def test_http_404_raises_download_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"404") as excinfo:
        download("ml-1m", tmp_path, base_url=server.base_url, checksum="0" * 32, timeout=5)
    assert f"{server.base_url}/ml-1m.zip" in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_raises_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # grab a free port, then release it so nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    with pytest.raises(DownloadError, match=re.escape(f"{base_url}/ml-1m.zip")):
        download("ml-1m", tmp_path, base_url=base_url, timeout=5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("evil", ["ml-100k/../../escaped.txt", "/tmp/ncf-zip-slip-escaped.txt"])
def test_zip_slip_member_is_rejected(server: Server, tmp_path: Path, evil: str) -> None:
    body = make_zip({"ml-100k/u.data": FAKE_U_DATA, evil: b"should never be written\n"})
    server.files["/movielens/ml-100k.zip"] = body
    dest = tmp_path / "a" / "b"

    with pytest.raises(DownloadError, match="unsafe member path"):
        download("ml-100k", dest, base_url=server.base_url, checksum=md5(body), timeout=5)

    assert list(dest.iterdir()) == []  # nothing unpacked at all, not even the safe member
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/ncf-zip-slip-escaped.txt").exists()


def test_existing_dir_without_marker_is_not_overwritten(server: Server, tmp_path: Path) -> None:
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_bytes(b"user's own copy\n")
    with pytest.raises(DownloadError, match=MARKER_NAME):
        download("ml-100k", tmp_path, base_url=server.base_url, timeout=5)
    assert server.requests == []
    assert (tmp_path / "ml-100k" / "u.data").read_bytes() == b"user's own copy\n"


def test_unknown_dataset_name_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ml-100k, ml-1m, ml-20m"):
        download("ml-42m", tmp_path)


def test_malformed_checksum_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hex digits"):
        download("ml-100k", tmp_path, checksum="not-a-checksum")


def test_registry_pins_official_urls_and_checksums() -> None:
    assert set(DATASETS) == {"ml-100k", "ml-1m", "ml-20m"}
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert re.fullmatch(r"[0-9a-f]{32}", spec.md5), name
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), name
        assert spec.size > 0
