"""Fixtures for the browser end-to-end test: the real server on a real port, a face clip.

The server is the real app on the shared harness (`fer_async.bench.harness.serve_in_process`),
in the same event loop as the async Playwright API: Chromium runs in its own processes, so the loop only
has to serve it, and the test can read the app's state directly. The model is the session's
`real_model` (tests/conftest.py), loaded once. A test that freezes the server (SIGSTOP) gets
`python -m fer_async` in a process of its own instead (`own_process_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy.procs import server_process, wait_until_serving

from fer_async.bench.harness import LiveServer, free_port, serve_in_process
from fer_async.synthetic import FRAME_HEIGHT, FRAME_WIDTH, astronaut_bgr, compose_frame, write_y4m

CHROMIUM = Path("/usr/bin/chromium")
CLIP_FPS = 15
CLIP_SECONDS = 2.0  # 30 frames x 460,800 bytes = 13.8 MB at 640x480; Chromium loops it
FACE_SIDE = 360  # the astronaut's face is then ~65 px wide in a 640x480 frame


def face_clip_frames(seconds: float = CLIP_SECONDS, fps: int = CLIP_FPS) -> list[np.ndarray]:
    """The astronaut with a gentle sway (a few pixels, one cycle per loop): a face in every frame.

    The motion is small on purpose: results come back one round trip late, and a box drawn for
    a frame 100 ms old must still sit on the face, so the test can check that it does. The
    cycle is periodic, so Chromium's looping of the file has no jump.
    """
    photo = astronaut_bgr()
    count = max(1, round(seconds * fps))
    x0, y0 = (FRAME_WIDTH - FACE_SIDE) // 2 + 60, (FRAME_HEIGHT - FACE_SIDE) // 2
    frames = []
    for i in range(count):
        phase = 2 * np.pi * i / count
        x, y = round(x0 + 12 * np.sin(phase)), round(y0 + 6 * np.cos(phase))
        frames.append(compose_frame(photo, x, y, side=FACE_SIDE, seed=7))
    return frames


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480, 2 s, 15 fps y4m of the astronaut's face drifting across the frame."""
    return write_y4m(tmp_path_factory.mktemp("clips") / "face.y4m", face_clip_frames(), CLIP_FPS)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def live_server(real_model: Any, tmp_path: Path) -> AsyncIterator[LiveServer]:
    from fer_async.config import Settings

    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    settings = Settings(host="127.0.0.1", port=free_port(), video_dir=video_dir, max_clients=8)
    async with serve_in_process(settings, real_model) as live:
        yield live


@dataclass
class RestartableServer:
    """The real app on one port that a test can stop under its pages and start again (a server restart)."""

    settings: Any
    model: Any
    live: LiveServer | None = None
    _stack: contextlib.AsyncExitStack | None = field(default=None, repr=False)

    async def start(self) -> LiveServer:
        self._stack = contextlib.AsyncExitStack()
        self.live = await self._stack.enter_async_context(serve_in_process(self.settings, self.model))
        return self.live

    async def stop(self) -> None:
        """Shut the server down (sockets closed with 1001, the port closed)."""
        stack, self._stack, self.live = self._stack, None, None
        if stack is not None:
            await stack.aclose()


@pytest.fixture
async def restartable_server(real_model: Any, tmp_path: Path) -> AsyncIterator[RestartableServer]:
    from fer_async.config import Settings

    settings = Settings(host="127.0.0.1", port=free_port(), video_dir=tmp_path, max_clients=8)
    server = RestartableServer(settings, real_model)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass(frozen=True)
class ServerProcess:
    """`python -m fer_async` on 127.0.0.1:`port`, as a user starts it; `process.pid` can be signalled."""

    process: asyncio.subprocess.Process
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def own_process_server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    port, log = free_port(), tmp_path / "server.log"
    async with server_process(["--video-dir", str(tmp_path)], log, port) as process:
        server = ServerProcess(process, port)
        await wait_until_serving(server.base_url, process, log)
        yield server
