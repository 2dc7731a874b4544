"""Fixtures for the browser end-to-end test: the real server on a real port, a face clip.

The server is the real app (`create_app`) on an `AppRunner` bound to 127.0.0.1, in the same
event loop as the async Playwright API: Chromium runs in its own processes, so the loop only
has to serve it, and the test can read the app's state directly. The model is the session's
`real_model` (tests/conftest.py), loaded once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from testsupport import free_port

from .clips import make_face_clip

CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class LiveServer:
    app: web.Application
    port: int
    runner: web.AppRunner
    settings: Any
    model: Any
    running: bool = True

    async def stop(self) -> None:
        """Shut the server down under its pages (sockets closed with 1001, port closed)."""
        self.running = False
        await asyncio.wait_for(self.runner.cleanup(), 60.0)

    async def restart(self) -> None:
        """A fresh app on the same port, as after a server restart."""
        from fer_async.server.app import create_app

        self.runner = web.AppRunner(create_app(self.settings, model=self.model), shutdown_timeout=5.0)
        await self.runner.setup()
        self.running = True
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.app = self.runner.app

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480, 2 s, 15 fps y4m of the astronaut's face drifting across the frame."""
    return make_face_clip(tmp_path_factory.mktemp("clips") / "face.y4m")


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def live_server(real_model: Any, tmp_path: Path) -> AsyncIterator[LiveServer]:
    from fer_async.config import Settings
    from fer_async.server.app import create_app

    port = free_port()
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    settings = Settings(host="127.0.0.1", port=port, video_dir=video_dir, max_clients=8)
    runner = web.AppRunner(create_app(settings, model=real_model), shutdown_timeout=5.0)
    await runner.setup()
    server = LiveServer(runner.app, port, runner, settings, real_model)
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield server
    finally:
        if server.running:
            await asyncio.wait_for(server.runner.cleanup(), 60.0)
