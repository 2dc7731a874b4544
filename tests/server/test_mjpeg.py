"""MJPEG streams of video files: parts are real JPEGs, one producer per file, safe names only."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import yarl
from testsupport import eventually

from fer_async.server import app as app_module
from fer_async.server.keys import DETECTOR_NAME, METRICS, VIDEO_HUB
from fer_async.server.mjpeg import BOUNDARY
from fer_async.tracker import TrackedFace, Tracker, tracker_for

from .helpers import CLIP_NAME, CLIP_SIZE, REPLY_TIMEOUT_S, Client, MakeClient


async def read_part(stream: aiohttp.StreamReader) -> bytes | None:
    """The JPEG of the next multipart part, or None at the closing boundary."""
    line = await stream.readline()
    while line in (b"\r\n", b"\n"):
        line = await stream.readline()
    if line.strip() == f"--{BOUNDARY}--".encode():
        return None
    assert line.strip() == f"--{BOUNDARY}".encode(), line
    headers: dict[str, str] = {}
    while (line := await stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("ascii").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg", headers
    data = await stream.readexactly(int(headers["content-length"]))
    assert await stream.readexactly(2) == b"\r\n"
    return data


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "an MJPEG part is not a decodable JPEG"
    return image


async def test_parts_are_jpegs_and_the_producer_stops_when_the_viewer_leaves(client: Client) -> None:
    hub = client.app[VIDEO_HUB]
    resp = await client.get(f"/video/{CLIP_NAME}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
    for _ in range(5):  # more parts than the clip has frames: it loops
        jpeg = await asyncio.wait_for(read_part(resp.content), REPLY_TIMEOUT_S)
        assert jpeg is not None
        assert decode(jpeg).shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
    assert hub.producers == 1 and hub.viewers == 1
    resp.close()
    await eventually(lambda: hub.producers == 0, what="the producer to stop")
    await eventually(
        lambda: client.app[METRICS].registry.get_sample_value("fer_video_viewers") == 0.0,
        what="the viewer gauge to drop",
    )
    frames = client.app[METRICS].registry.get_sample_value("fer_frames_total", {"source": "video"})
    faces = client.app[METRICS].registry.get_sample_value("fer_faces_total", {"source": "video"})
    assert frames is not None and frames >= 1
    assert faces is not None and faces >= 1  # the clip shows a real face
    # The channel's own schedule: after its first frame, YuNet searched around the face (Haar never does).
    regions = client.app[METRICS].registry.get_sample_value("fer_detections_total", {"search": "regions"})
    assert regions is not None and (regions >= 1) == (client.app[DETECTOR_NAME] == "yunet"), regions


async def test_a_looping_channel_tracks_by_the_files_time_and_starts_over_with_it(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The channel's tracker was given the server's clock, which never goes back: at the wrap the
    # last frame's face (id and smoothed label) carried over to the first frame's.
    updates: list[tuple[float, list[int]]] = []

    def recording_tracker(settings: Any) -> Tracker:
        tracker = tracker_for(settings)
        update = tracker.update

        def recorded(faces: Any, now_s: float) -> tuple[TrackedFace, ...]:
            tracked = update(faces, now_s)
            updates.append((now_s, [face.id for face in tracked]))
            return tracked

        tracker.update = recorded  # type: ignore[method-assign]
        return tracker

    monkeypatch.setattr(app_module, "tracker_for", recording_tracker)
    client = await make_client()
    resp = await client.get(f"/video/{CLIP_NAME}")
    async with asyncio.timeout(REPLY_TIMEOUT_S * 4):
        while sum(1 for (a, _), (b, _) in itertools.pairwise(updates) if b < a) < 2:
            assert await read_part(resp.content) is not None
    resp.close()
    times = [now_s for now_s, _ in updates]
    wraps = [i for i in range(1, len(times)) if times[i] < times[i - 1]]
    assert times[0] == 0.0 and all(times[i] == 0.0 for i in wraps)  # each pass from the file's start
    first_pass_ids = {i for _, ids in updates[: wraps[0]] for i in ids}
    second_pass_ids = {i for _, ids in updates[wraps[0] : wraps[1]] for i in ids}
    assert first_pass_ids and second_pass_ids and max(first_pass_ids) < min(second_pass_ids)


async def test_viewers_of_one_file_share_one_producer(client: Client) -> None:
    hub = client.app[VIDEO_HUB]
    first = await client.get(f"/video/{CLIP_NAME}")
    second = await client.get(f"/video/{CLIP_NAME}")
    for resp in (first, second):
        assert await asyncio.wait_for(read_part(resp.content), REPLY_TIMEOUT_S) is not None
    assert hub.producers == 1 and hub.viewers == 2
    first.close()
    await eventually(lambda: hub.viewers == 1, what="the first viewer to leave")
    assert hub.producers == 1
    assert await asyncio.wait_for(read_part(second.content), REPLY_TIMEOUT_S) is not None  # unaffected
    second.close()
    await eventually(lambda: hub.producers == 0, what="the producer to stop")


async def test_loop_0_ends_the_stream_at_the_end_of_the_file(client: Client) -> None:
    resp = await client.get(f"/video/{CLIP_NAME}?loop=0")
    assert resp.status == 200
    parts = 0
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        while (jpeg := await read_part(resp.content)) is not None:
            decode(jpeg)
            parts += 1
        assert await resp.content.read() == b""  # nothing after the closing boundary
    assert parts >= 1
    await eventually(lambda: client.app[VIDEO_HUB].producers == 0, what="the producer to stop")


@pytest.mark.parametrize(
    "target",
    [
        "/video/..",
        "/video/%2E%2E",
        "/video/..%2Fpyproject.toml",
        "/video/%2Fetc%2Fpasswd",
        "/video/%2Fetc%2Fhostname.avi",
        "/video/missing.avi",
        "/video/.hidden.avi",
        "/video/link.avi",  # a symlink out of the video directory
        "/video/notes.txt",  # not a video
    ],
)
async def test_unsafe_or_unknown_names_are_404(client: Client, video_dir: Path, tmp_path: Path, target: str) -> None:
    outside = tmp_path / "outside.avi"
    outside.write_bytes((video_dir / CLIP_NAME).read_bytes())
    (video_dir / "link.avi").symlink_to(outside)
    (video_dir / "notes.txt").write_text("not a video")
    (video_dir / ".hidden.avi").write_bytes(b"")
    # encoded=True: sent byte for byte, not normalised by the client ("/video/.." stays as is).
    resp = await client.get(yarl.URL(target, encoded=True), allow_redirects=False)
    # aiohttp itself resolves a literal "/video/.." to "/" (the index page): no video either way.
    assert resp.status == 404 or (target == "/video/.." and resp.content_type == "text/html"), (target, resp.status)
    assert client.app[VIDEO_HUB].producers == 0


async def test_a_file_name_that_is_not_utf8_is_left_out_of_the_list(client: Client, video_dir: Path) -> None:
    # Its bytes arrive as lone surrogates, which no URL can carry: the page and the JSON answered 500.
    (video_dir / os.fsdecode(b"caf\xe9.mp4")).write_bytes(b"not a video")
    for accept in ("text/html", "application/json"):
        response = await client.get("/videos", headers={"Accept": accept})
        assert response.status == 200, await response.text()
    listed = await (await client.get("/videos", headers={"Accept": "application/json"})).json()
    assert [video["name"] for video in listed["videos"]] == [CLIP_NAME]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100], ids=["empty", "garbage"])
async def test_a_video_that_does_not_decode_is_a_415_not_an_empty_stream(
    client: Client, video_dir: Path, content: bytes
) -> None:
    (video_dir / "broken.mp4").write_bytes(content)
    response = await client.get("/video/broken.mp4")
    assert response.status == 415
    assert "not a video OpenCV can decode" in (await response.json())["error"]
    assert client.app[VIDEO_HUB].producers == 0


async def test_videos_page_lists_files_as_html_and_json(client: Client, video_dir: Path) -> None:
    (video_dir / "notes.txt").write_text("not a video")
    resp = await client.get("/videos", headers={"Accept": "application/json"})
    assert resp.status == 200
    assert await resp.json() == {"videos": [{"name": CLIP_NAME, "url": f"/video/{CLIP_NAME}"}]}
    resp = await client.get("/videos")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert f'<figure data-url="/video/{CLIP_NAME}"' in html  # static/videos.js plays it (a few at once)
    assert 'data-max-playing="3"' in html
    assert "notes.txt" not in html
