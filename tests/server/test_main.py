"""`python -m fer_async` as a real process: it serves, and SIGTERM shuts it down cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from testsupport import serve_on_a_taken_port

from fer_async.bench.harness import free_port

from .helpers import CLIP_NAME

START_TIMEOUT_S = 180.0  # TensorFlow's import and the weights load, on a possibly busy CPU
STOP_TIMEOUT_S = 30.0


async def wait_healthy(base: str, proc: asyncio.subprocess.Process) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            assert proc.returncode is None, "the server exited during start-up"
            try:
                async with session.get(f"{base}/healthz") as resp:
                    return dict(await resp.json())
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.5)
    pytest.fail("the server did not come up")


async def test_serves_and_stops_cleanly_on_sigterm(tmp_path: Path, video_dir: Path, face_jpeg: bytes) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "FER_PORT": str(port), "FER_VIDEO_DIR": str(video_dir)}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "fer_async", "--host", "127.0.0.1", "--max-clients", "8"],
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        health = await wait_healthy(base, proc)
        assert health["status"] == "ok"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/") as resp:
                assert resp.status == 200 and "app.js" in await resp.text()
            async with session.get(f"{base}/metrics") as resp:
                assert "fer_frames_total" in await resp.text()
            sockets = [await session.ws_connect(f"{base}/ws", origin=base) for _ in range(3)]
            for ws in sockets:
                assert (await ws.receive_json(timeout=30))["type"] == "hello"
            await sockets[0].send_bytes(face_jpeg)
            reply = await sockets[0].receive_json(timeout=60)
            assert reply["type"] == "result" and reply["faces"]
            video = await session.get(f"{base}/video/{CLIP_NAME}")  # an endless stream, open
            assert video.status == 200
            await video.content.readline()

            proc.send_signal(signal.SIGTERM)
            for ws in sockets:
                # The close frame's code, as a browser reports it: aiohttp's client overwrites its
                # own close_code with 1006 when its close reply meets the server's closed socket
                # (aiohttp's server ignores incoming data once shutting down, so it does not wait).
                msg = await ws.receive(timeout=STOP_TIMEOUT_S)
                assert (msg.type, msg.data) == (WSMsgType.CLOSE, WSCloseCode.GOING_AWAY), msg
            code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            video.close()
        assert code == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "stopped" in text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_log_names_only_the_detector_that_runs(tmp_path: Path) -> None:
    port, nothing_there = free_port(), free_port()
    log = tmp_path / "server.log"
    # YuNet is neither cached nor downloadable (a refused connection): the server runs Haar.
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path),
        "FER_DETECTOR_MODEL_URL": f"http://127.0.0.1:{nothing_there}/",
    }
    env.pop("FER_DETECTOR_MODEL", None)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "fer_async", "--host", "127.0.0.1", "--port", str(port), "--detector", "yunet"],
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    try:
        health = await wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert health["detector"] == "haar"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert re.findall(r"detector:? (yunet|haar)\b", text) == ["haar"], text[-3000:]


async def test_port_in_use_is_reported_before_the_model_loads(tmp_path: Path) -> None:
    port, code, text = await serve_on_a_taken_port([], START_TIMEOUT_S)
    assert code == 1, text
    assert f"cannot listen on 127.0.0.1:{port}" in text and "in use" in text, text
    assert "loaded" not in text and "tensorflow" not in text.lower(), text  # failed before the model
