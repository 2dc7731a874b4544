"""HTTP endpoints: /api/predict, /healthz, /metrics, the pages and static files."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from html import unescape

import aiohttp
import cv2
import numpy as np
import pytest
from testsupport import SERVED_FILE, SERVED_PRECISION, eventually

from fer_async.config import Settings
from fer_async.imaging import decode_image, encode_jpeg
from fer_async.labels import EMOTION_COLOURS, EMOTIONS, Box
from fer_async.server.keys import METRICS, PHOTO_UPLOADS
from fer_async.server.views import MULTIPART_OVERHEAD, PHOTO_UPLOADS_AT_ONCE

from .helpers import Client, MakeClient, iou


async def test_predict_raw_body(client: Client, face_jpeg: bytes, face_box_region: Box) -> None:
    resp = await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"width", "height", "faces", "timings"}
    assert (body["width"], body["height"]) == (640, 480)
    assert len(body["faces"]) == 1
    assert iou(body["faces"][0]["box"], face_box_region) > 0.5
    assert list(body["faces"][0]["scores"]) == list(EMOTIONS)


def _twelve_megapixel_jpeg(face_jpeg: bytes, no_face_jpeg: bytes, two_faces_jpeg: bytes) -> bytes:
    """The tests/data photos upscaled 3.125x into a 2x2 grid: 4000x3000, as a phone takes them,
    with a phone's sensor noise and JPEG quality, so that the file is as large as a real one (MBs)."""
    tiles = [
        cv2.resize(decode_image(data), (2000, 1500), interpolation=cv2.INTER_CUBIC)
        for data in (face_jpeg, no_face_jpeg, no_face_jpeg, two_faces_jpeg)
    ]
    grid = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]).astype(np.int16)
    grid += np.random.default_rng(12).normal(0, 3, grid.shape).astype(np.int16)
    return encode_jpeg(np.clip(grid, 0, 255).astype(np.uint8), 92)


async def test_predict_a_12_megapixel_photo(
    client: Client, face_jpeg: bytes, no_face_jpeg: bytes, two_faces_jpeg: bytes, face_box_region: Box
) -> None:
    """Over the 4 Mpx budget: decoded at reduced scale, answered with boxes in the photo's own pixels."""
    photo = _twelve_megapixel_jpeg(face_jpeg, no_face_jpeg, two_faces_jpeg)
    assert len(photo) > Settings().max_frame_bytes  # larger than any webcam frame may be, as phone photos are
    resp = await client.post("/api/predict", data=photo, headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["width"], body["height"]) == (4000, 3000)
    boxes = [face["box"] for face in body["faces"]]
    assert all(x >= 0 and y >= 0 and x + w <= 4000 and y + h <= 3000 for x, y, w, h in boxes), boxes
    astronaut = [round(v * 3.125) for v in face_box_region]
    assert max(iou(box, astronaut) for box in boxes) > 0.5, (boxes, astronaut)
    assert any(x >= 2000 and y >= 1500 for x, y, _w, _h in boxes), boxes  # the two-face tile's portrait


async def test_predict_past_the_pixel_cap_is_413_naming_the_option(make_client: MakeClient, face_jpeg: bytes) -> None:
    client = await make_client(max_pixels=10_000)  # 640x480 is over 16 x 10,000
    resp = await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
    assert resp.status == 413 and "--max-pixels" in (await resp.json())["error"]


async def test_predict_multipart_form(client: Client, face_jpeg: bytes) -> None:
    form = aiohttp.FormData()
    form.add_field("note", "ignored")
    form.add_field("image", face_jpeg, filename="face.jpg", content_type="image/jpeg")
    resp = await client.post("/api/predict", data=form)
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["faces"]) == 1


async def test_predict_no_face(client: Client, no_face_jpeg: bytes) -> None:
    resp = await client.post("/api/predict", data=no_face_jpeg, headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200
    assert (await resp.json())["faces"] == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"definitely not an image", "image/jpeg", 400),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, "image/png", 400),  # a cut-off JPEG header
        (b"", "application/octet-stream", 400),
        (b"<html></html>", "text/html", 415),
    ],
)
async def test_predict_bad_input(client: Client, body: bytes, content_type: str, status: int) -> None:
    resp = await client.post("/api/predict", data=body, headers={"Content-Type": content_type})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert isinstance(error, str) and "Traceback" not in error


async def test_predict_multipart_without_image_field(client: Client) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"x", filename="x.jpg", content_type="image/jpeg")
    resp = await client.post("/api/predict", data=form)
    assert resp.status == 400
    assert "image" in (await resp.json())["error"]


async def test_predict_too_large_is_413(make_client: MakeClient, face_jpeg: bytes) -> None:
    client = await make_client(max_photo_bytes=20_000)
    assert len(face_jpeg) > 20_000
    resp = await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
    assert resp.status == 413
    error = (await resp.json())["error"]
    assert "20000" in error and "--max-photo-bytes" in error

    async def chunks() -> object:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(face_jpeg), 8192):
            yield face_jpeg[start : start + 8192]

    resp = await client.post("/api/predict", data=chunks(), headers={"Content-Type": "image/jpeg"})
    assert resp.status == 413

    form = aiohttp.FormData()
    form.add_field("image", face_jpeg, filename="face.jpg", content_type="image/jpeg")
    resp = await client.post("/api/predict", data=form)
    assert resp.status == 413

    # Many small fields that are not "image", streamed without a Content-Length.
    boundary = "junk-boundary"
    fields = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="junk{i}"\r\n\r\n'.encode() + b"x" * 4096 + b"\r\n"
        for i in range(40)
    ]
    payload = b"".join(fields) + f"--{boundary}--\r\n".encode()
    assert len(payload) > 20_000 + 16 * 1024

    async def streamed() -> object:
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    content_type = f"multipart/form-data; boundary={boundary}"
    resp = await client.post("/api/predict", data=streamed(), headers={"Content-Type": content_type})
    assert resp.status == 413


@pytest.mark.parametrize("chunked", [False, True])
async def test_predict_over_the_limit_is_the_same_413_with_or_without_content_length(
    make_client: MakeClient, chunked: bool
) -> None:
    client = await make_client(max_photo_bytes=20_000)
    body = b"\xff" * (20_000 + MULTIPART_OVERHEAD + 1)  # past the limit before any image check

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    resp = await client.post("/api/predict", data=chunks() if chunked else body, headers={"Content-Type": "image/jpeg"})
    assert resp.status == 413
    assert (await resp.json())["reason"] == "too_large"
    assert client.app[METRICS].registry.get_sample_value("fer_frame_errors_total", {"reason": "too_large"}) == 1.0


async def test_healthz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["model"] == "fernet"
    assert body["device"] in ("CPU", "GPU") and body["runtime"] == "onnx"  # the shipped export is current
    assert body["providers"] in (["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert (body["device"] == "GPU") == ("CUDAExecutionProvider" in body["providers"])
    assert (body["model_file"], body["precision"]) == (SERVED_FILE, SERVED_PRECISION)  # the default, current
    assert body["clients"] == 0
    ws = await client.ws_connect("/ws")
    await ws.receive()
    assert (await (await client.get("/healthz")).json())["clients"] == 1
    await ws.close()


async def test_metrics_expose_counters_histograms_and_gauges(client: Client, face_jpeg: bytes) -> None:
    await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
    await client.post("/api/predict", data=b"junk", headers={"Content-Type": "image/jpeg"})
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    for needle in [
        'fer_frames_total{source="api"} 1.0',
        'fer_faces_total{source="api"} 1.0',
        'fer_frames_dropped_total{source="ws"} 0.0',
        'fer_frame_errors_total{reason="bad_image"} 1.0',
        "fer_batch_size_count 1.0",
        "fer_queue_wait_seconds_count 1.0",
        "fer_model_seconds_count 1.0",
        "fer_connected_clients 0.0",
    ]:
        assert needle in text, needle
    assert "fer_executor_up" not in text  # in-process: no inference server to be down


async def test_two_apps_have_separate_metrics(make_client: MakeClient, face_jpeg: bytes) -> None:
    first = await make_client()
    second = await make_client()
    await first.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})
    assert 'fer_frames_total{source="api"} 1.0' in await (await first.get("/metrics")).text()
    assert 'fer_frames_total{source="api"} 0.0' in await (await second.get("/metrics")).text()


async def test_index_page_and_static_files(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert '<script type="module" src="/static/app.js">' in html and 'id="overlay"' in html and 'id="start"' in html
    for emotion in EMOTIONS:
        assert f'data-emotion="{emotion}"' in html
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for path, content_type in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        resp = await client.get(path)
        assert resp.status == 200 and content_type in resp.content_type, path
    assert (await client.get("/static/../pyproject.toml")).status in (403, 404)
    assert (await client.get("/nope")).status == 404


async def test_every_page_carries_the_colour_table_and_says_what_it_reads(make_client: MakeClient) -> None:
    client = await make_client(smoothing_ms=0.0)
    for path in ("/", "/videos", "/analyze"):
        html = await (await client.get(path)).text()
        colours = re.search(r"data-emotion-colours='([^']*)'", html)
        assert colours is not None, path
        table = json.loads(unescape(colours.group(1)))
        assert table == {name: "#{:02x}{:02x}{:02x}".format(*EMOTION_COLOURS[name]) for name in EMOTIONS}, path
        text = " ".join(html.split())
        assert "not the emotion a person feels" in text and "Art. 5(1)(f)" in text, path
        assert f'<a href="{path}" aria-current="page">' in html, path
    # With smoothing off the analysis page says its charts and shares are raw.
    assert "use <strong>raw</strong> scores" in " ".join((await (await client.get("/analyze")).text()).split())


async def test_uploads_read_at_once_are_bounded(client: Client, face_jpeg: bytes) -> None:
    """Each /api/predict body is buffered whole: past PHOTO_UPLOADS_AT_ONCE slow uploads, 503 at once."""
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield face_jpeg[:1000]
        await release.wait()
        yield face_jpeg[1000:]

    headers = {"Content-Type": "image/jpeg"}
    slow = [
        asyncio.create_task(client.post("/api/predict", data=slow_body(), headers=headers))
        for _ in range(PHOTO_UPLOADS_AT_ONCE)
    ]
    await eventually(client.app[PHOTO_UPLOADS].locked, what="the upload slots filled")
    refused = await client.post("/api/predict", data=face_jpeg, headers=headers)
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert "uploads" in (await refused.json())["error"]
    release.set()
    for resp in await asyncio.gather(*slow):
        assert resp.status == 200, await resp.text()
    resp = await client.post("/api/predict", data=face_jpeg, headers=headers)
    assert resp.status == 200  # the slots are free again
