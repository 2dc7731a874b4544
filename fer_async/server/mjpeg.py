"""Annotated video files as MJPEG streams: `GET /video/{name}` (`?loop=0` ends at the file's end).

One decode per file, shared by all its viewers: each viewer subscribes to the app's
`VideoHub` (fer_async.server.video_hub) and writes the annotated JPEGs it gets as parts of a
`multipart/x-mixed-replace` response, dropping the viewer when its connection stalls.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from fer_async.mailbox import MailboxClosed
from fer_async.server.keys import METRICS, SETTINGS, VIDEO_HUB
from fer_async.server.peers import drop
from fer_async.server.video_hub import HubClosed
from fer_async.video import has_frames, safe_video_path

logger = logging.getLogger(__name__)

BOUNDARY = "frame"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
# A viewer whose connection has not taken one part for this long is stalled; it is dropped so
# its handler and socket buffers do not linger.
VIEWER_WRITE_TIMEOUT_S = 10.0


def mjpeg_part(jpeg: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
    return head + jpeg + b"\r\n"


def _loop_requested(request: web.Request) -> bool:
    return request.query.get("loop", "1").strip().lower() not in ("0", "false", "no", "off")


async def video_stream(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    path = safe_video_path(settings.video_dir, request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text='{"error": "no such video"}', content_type="application/json")
    if not await asyncio.to_thread(has_frames, path):  # an empty stream would say nothing of why
        raise web.HTTPUnsupportedMediaType(
            text='{"error": "not a video OpenCV can decode (empty, truncated or corrupt)"}',
            content_type="application/json",
        )
    hub = request.app[VIDEO_HUB]
    metrics = request.app[METRICS]
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPE,
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # reverse proxies must not buffer an endless response
        }
    )
    transport = request.transport  # for abort(): aiohttp keeps no public handle on it
    try:
        async with hub.subscribe(path, loop=_loop_requested(request)) as mailbox:
            await response.prepare(request)
            metrics.video_viewers.inc()
            try:
                while True:
                    try:
                        jpeg = await mailbox.get()
                    except MailboxClosed:
                        break
                    async with asyncio.timeout(VIEWER_WRITE_TIMEOUT_S):
                        await response.write(mjpeg_part(jpeg))
            finally:
                metrics.video_viewers.dec()
        async with asyncio.timeout(VIEWER_WRITE_TIMEOUT_S):  # ?loop=0: the end waits on the viewer too
            await response.write(f"--{BOUNDARY}--\r\n".encode("ascii"))
            await response.write_eof()
    except HubClosed:
        raise web.HTTPServiceUnavailable(
            text='{"error": "server shutting down"}', content_type="application/json"
        ) from None
    except (ConnectionResetError, TimeoutError):
        logger.debug("video viewer %s left %s", request.remote, path.name)
        drop(transport)  # a viewer that stopped reading kept its socket open, megabytes queued, for good
    return response
