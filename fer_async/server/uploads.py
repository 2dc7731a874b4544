"""Upload bodies read at the edge: in chunks, within a byte limit, and never waited on for ever.

/api/predict buffers a photo in one of a few slots and /api/analyses reserves one of its job
slots while a video arrives, so a client that sends headers and then nothing (or a byte now and
then) would hold a slot as long as it liked: every other upload got 503. A body must keep
arriving (UPLOAD_IDLE_S) and end in time (`upload_deadline_s`: at least MIN_UPLOAD_RATE on average).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler

logger = logging.getLogger(__name__)

UPLOAD_IDLE_S = 30.0
MIN_UPLOAD_RATE = 128 * 1024  # bytes/s, about 1 Mbit/s
MIN_UPLOAD_DEADLINE_S = 120.0
# What aiohttp raises for a multipart body it cannot parse (no or a wrong boundary, a NUL or a
# line break in a part's header): the client's error, not the server's.
MALFORMED_MULTIPART = (ValueError, HttpProcessingError)


class UploadTooLarge(Exception):
    pass


class UploadStalled(Exception):
    pass


def expect_unless(
    refusal: Callable[[web.Request], web.Response | None],
) -> Callable[[web.Request], Awaitable[web.Response | None]]:
    """An `expect_handler` that answers `Expect: 100-continue` with the route's refusal when its
    headers already earn one (curl asks so for any body over 1 MB). aiohttp's own says "100
    Continue" to all: a client sent 200 MB of video before it heard that it was too large or
    that no job slot was free."""

    async def expect(request: web.Request) -> web.Response | None:
        refused = refusal(request)
        if refused is not None:
            return refused
        await _default_expect_handler(request)
        return None

    return expect


def upload_deadline(limit: int) -> float:
    """The monotonic time by which a whole request body of at most `limit` bytes must have arrived."""
    return time.monotonic() + upload_deadline_s(limit)


def _wait_s(deadline: float) -> float:
    return max(0.0, min(UPLOAD_IDLE_S, deadline - time.monotonic()))


async def next_part(reader: MultipartReader, deadline: float) -> BodyPartReader | MultipartReader | None:
    """The next part of a multipart body, its headers within UPLOAD_IDLE_S and `deadline` (UploadStalled)."""
    try:
        async with asyncio.timeout(_wait_s(deadline)):
            return await reader.next()
    except TimeoutError:
        raise UploadStalled(
            f"the upload stalled: a part's headers did not arrive within {UPLOAD_IDLE_S:.0f} s"
        ) from None


def upload_deadline_s(limit: int) -> float:
    return max(MIN_UPLOAD_DEADLINE_S, limit / MIN_UPLOAD_RATE)


async def body_chunks(
    stream: StreamReader | BodyPartReader, limit: int, chunk: int, deadline: float
) -> AsyncIterator[bytes]:
    """The body's chunks; UploadTooLarge past `limit` bytes, UploadStalled when it stops arriving or
    misses `deadline` (`upload_deadline`: one for the whole request, whatever its parts)."""
    received = 0
    while True:
        try:
            async with asyncio.timeout(_wait_s(deadline)):
                data = await (stream.read_chunk(chunk) if isinstance(stream, BodyPartReader) else stream.read(chunk))
        except TimeoutError:
            raise UploadStalled(
                f"the upload stalled: nothing for {UPLOAD_IDLE_S:.0f} s, or slower than "
                f"{MIN_UPLOAD_RATE // 1024} KB/s on average"
            ) from None
        if not data:
            return
        received += len(data)
        if received > limit:
            raise UploadTooLarge
        yield data


async def read_limited(stream: StreamReader | BodyPartReader, limit: int, chunk: int, deadline: float) -> bytes:
    """The whole body (`body_chunks`: UploadTooLarge past `limit` bytes, UploadStalled past `deadline`)."""
    data = bytearray()
    async for part in body_chunks(stream, limit, chunk, deadline):
        data += part
    return bytes(data)


# An upload that failed on the client's side; `client_failure` answers each.
CLIENT_FAILURES: tuple[type[Exception], ...] = (UploadStalled, ConnectionError, *MALFORMED_MULTIPART)


def client_failure(exc: Exception, route: str) -> web.Response:
    """The answer to an upload that failed on its client's side (one of CLIENT_FAILURES)."""
    if isinstance(exc, UploadStalled):
        logger.info("%s: %s", route, exc)
        return web.json_response({"error": str(exc)}, status=408)
    if isinstance(exc, ConnectionError):  # the client went away: nobody to answer, not a server error
        logger.info("%s: the upload was cut off by its client: %s", route, exc)
        return web.json_response({"error": "the upload was cut off"}, status=400)
    return web.json_response({"error": f"malformed multipart body: {exc}"}, status=400)
