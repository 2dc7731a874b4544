"""Helpers shared by the web-layer tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient

from fer_async.synthetic import compose_frame, drifting_face_frames, jpeg, write_video

REPLY_TIMEOUT_S = 60.0  # generous: the CPU may be shared with a training run
JOB_TIMEOUT_S = 180.0
CLIP_NAME = "clip.avi"
CLIP_SIZE = (320, 240)
CLIP_FRAMES = 12
CLIP_FPS = 12


def make_frame_jpeg(photo: np.ndarray, x: int, y: int, side: int, *, quality: int = 85) -> bytes:
    """A 640x480 JPEG with `photo` (a face) shrunk to side x side and pasted at (x, y)."""
    return jpeg(compose_frame(photo, x, y, side=side), quality)


def iou(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / float(aw * ah + bw * bh - inter)


async def receive_json(ws: aiohttp.ClientWebSocketResponse, within_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    msg = await ws.receive(timeout=within_s)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected text, got {msg.type!r} {msg.data!r} {msg.extra!r}"
    return dict(json.loads(msg.data))


async def reply_for(ws: aiohttp.ClientWebSocketResponse, frame_id: int) -> dict[str, Any]:
    """The result or error for `frame_id`, skipping anything else (dropped notices, pongs)."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        reply = await receive_json(ws, max(0.1, deadline - time.monotonic()))
        if reply.get("frame") == frame_id and reply["type"] in ("result", "error"):
            return reply


async def connect(client: Client, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    ws: aiohttp.ClientWebSocketResponse = await client.ws_connect("/ws", **kwargs)
    hello = await receive_json(ws)
    assert hello["type"] == "hello"
    return ws


def write_clip(path: Path) -> Path:
    """A short real-face clip (MJPG in AVI, which every OpenCV build can write and read)."""
    width, height = CLIP_SIZE
    frames = drifting_face_frames(CLIP_FRAMES, width=width, height=height, side=200, start=(40, 20), step=(4, 0))
    return write_video(path, frames, CLIP_FPS)


def upload_form(path: Path, name: str | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("video", path.read_bytes(), filename=name or path.name, content_type="video/mp4")
    return form


async def wait_for_job(client: Client, url: str) -> tuple[dict[str, Any], list[int]]:
    """The job once it has ended, and the frames_done values seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        response = await client.get(url)
        assert response.status == 200
        job = await response.json()
        seen.append(job["frames_done"])
        if job["state"] not in ("queued", "running"):
            return job, seen
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
