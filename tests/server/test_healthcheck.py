"""`python -m fer_async.healthcheck` (the image's HEALTHCHECK) against the real app, over http and https.

The image's first check asked plain http on 127.0.0.1:$FER_PORT, so a server with `FER_CERT`
set (or listening on one address only) was marked unhealthy while it served."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fer_async.config import Settings
from fer_async.healthcheck import health_url, server_options
from fer_async.server.app import create_app


async def healthcheck(env: dict[str, str], *options: str) -> int:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("FER_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fer_async.healthcheck", *options, env={**clean, **env}, stderr=asyncio.subprocess.DEVNULL
    )
    return await process.wait()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fer.example.com"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def serve(real_model: Any, settings: Settings, tls: ssl.SSLContext | None) -> AsyncIterator[int]:
    runner = web.AppRunner(create_app(settings, model=real_model))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_plain_http_on_every_address(real_model: Any, base_settings: Settings) -> None:
    async for port in serve(real_model, base_settings, None):
        assert await healthcheck({"FER_HOST": "0.0.0.0", "FER_PORT": str(port)}) == 0
    assert await healthcheck({"FER_HOST": "0.0.0.0", "FER_PORT": str(port)}) == 1  # nobody there now


async def test_https_when_the_server_has_a_certificate(
    real_model: Any, base_settings: Settings, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async for port in serve(real_model, base_settings, tls):
        env = {"FER_HOST": "0.0.0.0", "FER_PORT": str(port)}
        assert await healthcheck(env) == 1  # plain http to a TLS port: what the image asked before
        assert await healthcheck({**env, "FER_CERT": str(cert), "FER_KEY": str(key)}) == 0
        # The same settings given as the server's options, not its variables.
        assert await healthcheck({}, "--port", str(port)) == 1
        assert await healthcheck({}, "--port", str(port), "--cert", str(cert), "--key", str(key)) == 0


def test_the_url_asks_loopback_for_every_address_and_the_host_otherwise() -> None:
    assert health_url(Settings(host="0.0.0.0", port=8080)) == "http://127.0.0.1:8080/healthz"
    assert health_url(Settings(host="::", port=8080)) == "http://[::1]:8080/healthz"
    assert (
        health_url(Settings(host="10.1.2.3", port=9000, cert=Path("c"), key=Path("k")))
        == "https://10.1.2.3:9000/healthz"
    )


def test_a_server_s_options_are_read_off_its_command_line() -> None:
    assert server_options(["/opt/fer-async/bin/python", "/opt/fer-async/bin/fer-async", "--port", "9000"]) == [
        "--port",
        "9000",
    ]
    assert server_options(["fer-async"]) == []
    assert server_options(["python3", "-m", "fer_async", "--cert", "c.pem", "--key", "k.pem"]) == [
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
    ]
    assert server_options(["python3", "-m", "fer_async.analyze", "clip.mp4"]) is None
    assert server_options(["/sbin/docker-init", "--", "sh"]) is None
    assert server_options(["python3", "-m"]) is None
