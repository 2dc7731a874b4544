"""Resolving the YuNet model file: cache, a download from a local HTTP server on 127.0.0.1, refusals, offline."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_async import detector_model
from fer_async.detector import create_detector_for
from fer_async.detector_model import (
    URL_ENV,
    YUNET_SHA256,
    YUNET_SIZE,
    YUNET_URL,
    ModelDownloadError,
    cache_dir,
    cached_model_path,
    download_model,
    resolve_yunet_model,
    sha256_of,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the real model at /good, a corrupted copy at /corrupt, an aborted transfer at /truncated."""

    model: bytes = b""
    requests: list[str] = []  # noqa: RUF012 (shared on purpose: the test reads it)

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = self.model
        if self.path == "/corrupt":
            body = body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]
        elif self.path == "/huge":
            body = b"\0" * (detector_model.MAX_DOWNLOAD_BYTES + 1)
        elif self.path not in ("/good", "/truncated"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/truncated":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer hangs up mid-transfer
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the aborted transfer is on purpose


@pytest.fixture(scope="module")
def model_server(yunet_model: Path) -> Iterator[str]:
    _Handler.model = yunet_model.read_bytes()
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def refused_url() -> str:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.onnx"


def cache_files(env: dict[str, str]) -> list[str]:
    directory = cache_dir(env)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_pinned_constants_match_the_shared_copy(yunet_model: Path) -> None:
    assert yunet_model.stat().st_size == YUNET_SIZE
    assert sha256_of(yunet_model) == YUNET_SHA256
    assert YUNET_URL.startswith("https://github.com/opencv/opencv_zoo/")


def test_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "fer_async"
    assert cache_dir({}) == Path.home() / ".cache" / "fer_async"
    assert cache_dir({"XDG_CACHE_HOME": "relative/dir"}) == Path.home() / ".cache" / "fer_async"


def test_explicit_path_wins_without_any_lookup(tmp_path: Path, env: dict[str, str]) -> None:
    given = tmp_path / "mine.onnx"
    assert resolve_yunet_model(given, env=env, url=refused_url()) == given
    assert cache_files(env) == []


def test_download_once_then_cache_hit(model_server: str, env: dict[str, str]) -> None:
    _Handler.requests.clear()
    path = resolve_yunet_model(env=env, url=f"{model_server}/good")
    assert path == cached_model_path(env) and sha256_of(path) == YUNET_SHA256
    assert cache_files(env) == [path.name]  # no temporary file left behind
    # Second time: from the cache, no request (the URL would be refused anyway).
    assert resolve_yunet_model(env=env, url=refused_url()) == path
    assert _Handler.requests == ["/good"]
    # The resolved file really is a working YuNet model.
    detector, name = create_detector_for("yunet", path)
    assert name == "yunet" and type(detector).__name__ == "YuNetDetector"


def test_url_env_var_is_used(model_server: str, env: dict[str, str]) -> None:
    env[URL_ENV] = f"{model_server}/good"
    assert resolve_yunet_model(env=env) == cached_model_path(env)


@pytest.mark.parametrize(
    ("path", "message"),
    [("/corrupt", "sha256"), ("/truncated", "bytes"), ("/huge", "bytes"), ("/missing", "404")],
)
def test_bad_downloads_are_refused_and_nothing_is_cached(
    model_server: str, env: dict[str, str], path: str, message: str
) -> None:
    with pytest.raises(ModelDownloadError, match=message):
        download_model(f"{model_server}{path}", cached_model_path(env))
    assert cache_files(env) == []


def test_a_corrupt_cached_file_is_replaced(model_server: str, env: dict[str, str]) -> None:
    cached = cached_model_path(env)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a model")
    assert resolve_yunet_model(env=env, url=f"{model_server}/good") == cached
    assert sha256_of(cached) == YUNET_SHA256


def test_offline_falls_back_to_haar_with_one_log_line(env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fer_async")
    assert resolve_yunet_model(env=env, url=refused_url()) is None
    lines = [r for r in caplog.records if r.name == detector_model.__name__]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    text = lines[0].getMessage()
    assert "Haar" in text and YUNET_URL in text and YUNET_SHA256 in text and "--detector-model" in text
    assert cache_files(env) == []
    detector, name = create_detector_for("yunet", None, env=env, url=refused_url())
    assert name == "haar" and type(detector).__name__ == "HaarDetector"


def test_non_http_urls_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ModelDownloadError, match="http"):
        download_model(f"file://{tmp_path}/x.onnx", cached_model_path(env))
