"""HTTP endpoints: the pages, `/api/predict`, `/healthz` and `/metrics`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import BodyPartReader, web

from fer_async.config import Settings
from fer_async.labels import EMOTIONS, emotion_colours_css, emotion_inks_css
from fer_async.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from fer_async.server.keys import (
    DETECTOR_NAME,
    METRICS,
    MODEL,
    PHOTO_UPLOADS,
    PIPELINE,
    SETTINGS,
    VIDEO_HUB,
    WEBSOCKETS,
)
from fer_async.server.outcomes import Reason, Refused, check_frame, refuse, server_timings, submit
from fer_async.server.uploads import (
    CLIENT_FAILURES,
    UploadTooLarge,
    body_chunks,
    client_failure,
    next_part,
    read_limited,
    upload_deadline,
)
from fer_async.server.worker import WORKER
from fer_async.video import list_videos

logger = logging.getLogger(__name__)

# Upload bodies are read in pieces so that an over-size one is refused after max_frame_bytes
# bytes, not after buffering whatever the client chose to send.
READ_CHUNK = 64 * 1024
# Room for a multipart envelope (boundaries, part headers) around an image at the limit.
MULTIPART_OVERHEAD = 16 * 1024
# Photos buffered at once by /api/predict: with --max-photo-bytes (32 MB) at most 128 MB of uploads.
PHOTO_UPLOADS_AT_ONCE = 4
# Streams the /videos page plays at once: each holds one of the 6 connections a browser opens to
# a server, and the page's links and other tabs need some of them.
VIDEOS_PLAYING_AT_ONCE = 3
RAW_CONTENT_TYPES = ("image/jpeg", "image/png", "image/pjpeg", "application/octet-stream")
# The HTTP status of each refusal; the passing ones (503) also say when to retry.
HTTP_STATUS = {
    Reason.TOO_LARGE: 413,
    Reason.BAD_IMAGE: 400,
    Reason.BUSY: 503,
    Reason.SHUTDOWN: 503,
    Reason.ANALYSIS_FAILED: 500,
    Reason.EXECUTOR_DOWN: 503,
}


def _device(request: web.Request) -> str:
    return str(getattr(request.app[MODEL], "device", "CPU"))


def template_globals(settings: Settings) -> dict[str, Any]:
    """What every page's template sees: the emotions with their one colour table (labels.py), for
    the pages' scripts too, and the smoothing the tracks get (the analysis page says what it charts)."""
    return {
        "emotions": EMOTIONS,
        "emotions_json": json.dumps(list(EMOTIONS)),
        "emotion_colours_json": json.dumps(emotion_colours_css()),
        "emotion_inks_json": json.dumps(emotion_inks_css()),
        "smoothing_ms": settings.smoothing_ms,
    }


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    return {
        "max_frame_bytes": settings.max_frame_bytes,
        "device": _device(request),
        "detector": request.app[DETECTOR_NAME],
    }


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def videos(request: web.Request) -> web.StreamResponse:
    video_dir = request.app[SETTINGS].video_dir
    names = await asyncio.to_thread(list_videos, video_dir)  # a directory of thousands: 330 ms
    entries = [{"name": name, "url": f"/video/{quote(name)}"} for name in names]
    if _wants_json(request):
        return web.json_response({"videos": entries})
    context = {"videos": entries, "video_dir": video_dir, "max_playing": VIDEOS_PLAYING_AT_ONCE}
    return aiohttp_jinja2.render_template("videos.html", request, context)


async def healthz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    # A remote executor reports why it cannot serve (server down, model not ready): the
    # process is alive and answers every frame, but with "analysis failed".
    problem = getattr(request.app[MODEL], "problem", None)
    return web.json_response(
        {
            "status": "ok" if problem is None else "degraded",
            **({} if problem is None else {"reason": str(problem)}),
            "model": settings.model_name,
            # The file that serves (fernet.int8.onnx, fernet.onnx, fernet.json); null with --executor.
            "model_file": getattr(request.app[MODEL], "model_file", None),
            "precision": getattr(request.app[MODEL], "precision", None),
            "device": _device(request),
            # onnxruntime's execution providers in use, e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"];
            # null on Keras and with --executor.
            "providers": getattr(request.app[MODEL], "providers", None),
            "detector": request.app[DETECTOR_NAME],
            "runtime": str(getattr(request.app[MODEL], "runtime", "remote")),  # only a RemotePredictor has none
            "clients": len(request.app[WEBSOCKETS]),
            "video_viewers": request.app[VIDEO_HUB].viewers,
            "queue": request.app[PIPELINE].queue_size,
            "worker": request.app[WORKER].as_json(),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    metrics_ = request.app[METRICS]
    own = metrics_.own_families()  # on the loop's thread: fer_event_loop_cpu_seconds is this thread's CPU
    # The rest off the loop: with --workers it reads the sibling workers' published samples from disk.
    body = await asyncio.to_thread(metrics_.render, own)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _upload(request: web.Request, limit: int) -> bytes | web.Response:
    """The image bytes of a raw or multipart upload, or the error response to send instead."""
    deadline = upload_deadline(limit)  # one for the request: many slow parts must not each get their own
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await next_part(reader, deadline)) is not None:
            if isinstance(part, BodyPartReader) and part.name == "image":
                return await read_limited(part, limit, READ_CHUNK, deadline)
            # Other fields are read and discarded, within the same limit: without a Content-Length
            # (a chunked upload) nothing else would stop a client streaming junk fields forever.
            if isinstance(part, BodyPartReader):
                async for _ in body_chunks(part, limit + MULTIPART_OVERHEAD, READ_CHUNK, deadline):
                    if request.content.total_bytes > limit + MULTIPART_OVERHEAD:
                        raise UploadTooLarge
            if request.content.total_bytes > limit + MULTIPART_OVERHEAD:  # a nested multipart, or many fields
                raise UploadTooLarge
        return _error(400, "multipart upload needs a form field named 'image'")
    if request.content_type not in RAW_CONTENT_TYPES:
        return _error(415, "send the image as the body (image/jpeg or image/png) or as form field 'image'")
    return await read_limited(request.content, limit, READ_CHUNK, deadline)


def _too_large(limit: int) -> str:
    return f"image larger than {limit} bytes (--max-photo-bytes)"


def predict_refusal(request: web.Request) -> web.Response | None:
    """The answer to a photo refused from its headers alone (too large, no slot free), or None."""
    limit = request.app[SETTINGS].max_photo_bytes
    metrics_ = request.app[METRICS]
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        return _refused(refuse(metrics_, Reason.TOO_LARGE, _too_large(limit)))
    if request.app[PHOTO_UPLOADS].locked():  # each upload is buffered whole: a bound on them is a bound on memory
        return _refused(refuse(metrics_, Reason.BUSY, f"{PHOTO_UPLOADS_AT_ONCE} uploads are being read; try again"))
    return None


async def predict(request: web.Request) -> web.Response:
    """One image in (raw body or multipart field "image"), its faces out."""
    settings = request.app[SETTINGS]
    limit = settings.max_photo_bytes
    metrics_ = request.app[METRICS]
    if (refused := predict_refusal(request)) is not None:
        return refused
    async with request.app[PHOTO_UPLOADS]:
        try:
            upload = await _upload(request, limit)
        except UploadTooLarge:
            return _refused(refuse(metrics_, Reason.TOO_LARGE, _too_large(limit)))
        except CLIENT_FAILURES as exc:
            return client_failure(exc, "POST /api/predict")
    if isinstance(upload, web.Response):
        return upload
    started = time.perf_counter()  # after the upload: a slow client's bytes are not server time
    outcome = check_frame(metrics_, upload, limit, settings.max_pixels, option="--max-photo-bytes") or await submit(
        request.app[PIPELINE], metrics_, "api", upload
    )
    if isinstance(outcome, Refused):
        return _refused(outcome)
    payload = outcome.to_json()
    payload["timings"] = server_timings(outcome, started)
    return web.json_response(payload)


def _refused(refused: Refused) -> web.Response:
    retry = refused.retry_after_s
    headers = {} if retry is None else {"Retry-After": str(retry)}
    return web.json_response(
        {"error": refused.message, "reason": refused.reason.value}, status=HTTP_STATUS[refused.reason], headers=headers
    )
