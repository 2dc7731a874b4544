"""The WebSocket endpoint `/ws`: webcam frames in, faces with emotions out.

Protocol
--------
Connect to ``ws://HOST:PORT/ws`` (``wss://`` when the server runs with ``--cert/--key``).

* Handshake. A browser's ``Origin`` must be the page's own origin (its host:port equals the
  request's ``Host``) or one given with ``--allow-origin`` (``'*'`` allows any); a foreign
  origin is refused with HTTP 403 before the upgrade. Clients that send no ``Origin``
  (scripts, the bench) are allowed. When ``--max-clients`` are already connected the socket
  is accepted and closed at once with code 1013 (try again later), reason
  ``"server full (N clients)"``.
* On connect the server sends
  ``{"type": "hello", "emotions": ["angry", ...7 names], "max_frame_bytes": N}``.
* Client → server, binary message: one JPEG or PNG frame (at most ``max_frame_bytes``).
  Frame ids: the server counts binary messages per connection starting at 1, so the client
  can match replies by counting its own sends. Optionally the client sends the text message
  ``{"type": "frame", "id": N}`` (N a non-negative integer) right before a binary frame to
  give that frame its own id; the count goes on regardless.
* Server → client, for each frame it analysed::

      {"type": "result", "frame": ID, "width": W, "height": H,
       "faces": [{"id": 1, "box": [x, y, w, h], "emotion": "happy",
                  "scores": {"angry": 0.01, ..., "neutral": 0.02},
                  "raw_scores": {"angry": 0.03, ..., "neutral": 0.05}}],
       "timings": {"decode": ms, "detect": ms, "model": ms, "queue": ms, "total": ms},
       "dropped": COUNT}

  Boxes are in the frame's own pixels; scores follow the order of ``emotions``. Faces are
  tracked along the connection (`fer_async.tracker`): ``id`` is stable while the face stays
  in view, ``scores`` are smoothed over ``--smoothing-ms`` of the track (``raw_scores`` are
  this frame's own), and ``emotion`` changes only when another class leads by
  ``--label-margin``. ``total`` is
  the server-side time from receiving the frame to sending the result, ``queue`` the part of
  it spent waiting (for this client's previous frame, for a batch, for the model thread).
  ``dropped`` counts this connection's frames replaced so far (see below).
* Latest wins: each connection has at most one frame being analysed and one waiting. A frame
  that arrives while another is waiting replaces it; the replaced frame is answered
  ``{"type": "dropped", "frame": ID}`` and never gets a result. So a client that sends
  faster than the server answers gets fresh results, never a backlog. Every binary message
  gets exactly one reply: ``result``, ``error`` or ``dropped``. Clients should keep one
  frame in flight: send the next when the reply to the last one arrives.
* Errors, after which the connection stays open:
  ``{"type": "error", "frame": ID, "error": "..."}`` for a frame that is not a JPEG/PNG, is
  truncated, has too many pixels, or exceeds ``max_frame_bytes``; with ``"error": "server
  busy"`` when the analysis queue is full (send again later), ``"analysis failed"`` when the
  model failed on that frame's batch (details are only logged on the server), ``"server
  shutting down"`` during shutdown. Text messages other than the ones below (not JSON, not an
  object, unknown ``type``, too long) get ``{"type": "error", "error": "..."}`` without a frame.
* ``{"type": "ping"}`` → ``{"type": "pong"}``.
* Back-pressure: when 64 replies are waiting to be sent, the server stops reading the
  socket until the client has taken some, so a client that sends faster than it reads is
  slowed down by TCP rather than buffered for.
* Close codes from the server: 1001 server shutting down, 1008 client does not read its
  replies (a send blocked for more than a few seconds), 1009 message larger than twice
  ``max_frame_bytes`` (refused before it is buffered; smaller oversize frames only get an
  error), 1013 server full. The server pings every 20 s and drops peers that do not answer.

Structure: the handler task is the only reader of its socket; it validates each message and
puts frames into a one-slot `LatestMailbox`. One worker task per connection takes the newest
frame, awaits the shared batcher, and is the only sender, so a slow or silent client can only
ever hold up itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from typing import Any

import yarl
from aiohttp import WSCloseCode, WSMsgType, web

from fer_async.batcher import BatcherClosed, BatcherOverloaded
from fer_async.imaging import ImageError, image_size
from fer_async.labels import EMOTIONS, FrameResult
from fer_async.mailbox import LatestMailbox, MailboxClosed
from fer_async.server.keys import BATCHER, METRICS, SETTINGS, WEBSOCKETS
from fer_async.tracker import Tracker

logger = logging.getLogger(__name__)

# Reaps tabs that vanished without a close (sleeping laptops, dropped Wi-Fi).
HEARTBEAT_S = 20.0
# A client whose socket has not taken a small JSON reply for this long is not reading; it is
# closed (1008) so it cannot keep a worker and buffers alive.
SEND_TIMEOUT_S = 5.0
# How long a closing handshake may take before the transport is simply dropped; keeps
# shutdown and slow-client eviction bounded.
CLOSE_TIMEOUT_S = 3.0
# aiohttp refuses (1009) messages above its max_msg_size before buffering them. We set that
# to twice the frame limit so that a moderately oversize frame is answered with a JSON error
# and the connection survives, while memory per socket stays bounded.
OVERSIZE_FACTOR = 2
# Control messages are tiny; a longer text message is a client bug, not worth parsing.
MAX_TEXT_CHARS = 1024
# Replies waiting for the worker (pongs, errors, dropped notices). When it is full the reader
# stops reading until the worker has sent some: memory stays bounded, no reply is lost.
OUTBOX_LIMIT = 64
MAX_FRAME_ID = 2**53 - 1  # the largest integer a JavaScript number holds exactly
# Kernel send buffer per WebSocket. Linux autotunes it up to megabytes, which would let a
# client that never reads absorb minutes of replies before a send blocks; results are <1 KB,
# so 128 KB is hundreds of replies of slack for a slow link, and a bound on memory per client.
SEND_BUFFER_BYTES = 128 * 1024


@dataclass(frozen=True)
class _Frame:
    id: int
    data: bytes
    received: float  # time.perf_counter() when the message arrived


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "ws": 80, "https": 443, "wss": 443}.get(scheme)


def _origin_key(origin: str) -> str | None:
    """`scheme://host:port` in lower case with an explicit port, or None if unparsable."""
    try:
        url = yarl.URL(origin.strip())
    except ValueError:
        return None
    if not url.scheme or not url.host:
        return None
    port = url.port or _default_port(url.scheme)
    return f"{url.scheme.lower()}://{url.host.lower()}:{port}"


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Same-origin, or listed in `allowed` ('*' = any); a request without Origin passes.

    Browsers always send Origin on WebSocket handshakes, so this stops other web sites from
    using a visitor's browser to reach the server (cross-site WebSocket hijacking). Non-browser
    clients are not what an Origin check can stop, so they may omit it.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if "*" in allowed:
        return True
    key = _origin_key(origin)
    if key is None:
        return False  # "null" (sandboxed frames, file://) and garbage
    if key in {_origin_key(a) for a in allowed}:
        return True
    # Same origin: the Origin's host:port equals the Host the browser connected to.
    host_url = _origin_key(f"{request.scheme}://{request.host}")
    return host_url is not None and key.split("://", 1)[1] == host_url.split("://", 1)[1]


class ClientConnection:
    """One WebSocket client: the reader (handler task) and its worker task."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        app = request.app
        self.ws = ws
        self.peer = request.remote or "?"
        self.settings = app[SETTINGS]
        self.batcher = app[BATCHER]
        self.metrics = app[METRICS]
        self.mailbox: LatestMailbox[_Frame] = LatestMailbox()
        self.outbox: collections.deque[dict[str, Any]] = collections.deque()
        # Set by the reader whenever there is something for the worker (a frame or a reply).
        self.wake = asyncio.Event()
        # Set by the worker when the outbox has room again, or when it has stopped.
        self.room = asyncio.Event()
        self.worker_stopped = False
        self.evicting = False  # the worker is closing the socket because the client stopped reading
        self.frames_received = 0
        self.next_id: int | None = None  # from a {"type": "frame"} message, for the next frame
        self.dropped = 0
        # Touched only by the worker, which analyses this connection's frames one at a time, in order.
        self.tracker = Tracker(smoothing_ms=self.settings.smoothing_ms, switch_margin=self.settings.label_margin)

    # ------------------------------------------------------------------ reader (handler task)

    async def read_loop(self) -> None:
        async for msg in self.ws:
            if self.worker_stopped:
                break  # nobody left to answer (the worker closed the socket or failed)
            if msg.type is WSMsgType.BINARY:
                await self._on_frame(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type is WSMsgType.ERROR:
                # aiohttp has already started closing (e.g. 1009 for an over-size message).
                reason = "too_large" if self.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG else "protocol"
                self.metrics.frame_errors.labels(reason).inc()
                logger.info("closing %s: %s", self.peer, msg.data)
                break

    async def send_hello(self) -> None:
        await self._reply(
            {"type": "hello", "emotions": list(EMOTIONS), "max_frame_bytes": self.settings.max_frame_bytes}
        )

    async def _reply(self, payload: dict[str, Any]) -> None:
        """Queue a reply for the worker; waits (stops reading the socket) while the outbox is full.

        That wait is TCP back-pressure on a client that sends faster than it reads its replies:
        its own sends stall, every message still gets its reply, and if it never reads at all,
        the worker's send times out and the socket is closed (1008).
        """
        while len(self.outbox) >= OUTBOX_LIMIT and not self.worker_stopped:
            self.room.clear()
            await self.room.wait()
        self.outbox.append(payload)
        self.wake.set()

    async def _on_frame(self, data: bytes) -> None:
        self.frames_received += 1
        frame_id = self.frames_received if self.next_id is None else self.next_id
        self.next_id = None
        limit = self.settings.max_frame_bytes
        if len(data) > limit:
            await self._frame_rejected(frame_id, "too_large", f"frame is {len(data)} bytes; the limit is {limit}")
            return
        try:
            # Cheap header checks here, so junk never takes a batch slot or displaces a good frame.
            check_image_header(data, self.settings.max_pixels)
        except ImageError as exc:
            await self._frame_rejected(frame_id, "bad_image", str(exc))
            return
        replaced = self.mailbox.put(_Frame(frame_id, data, time.perf_counter()))
        if replaced is not None:
            self.dropped += 1
            self.metrics.frames_dropped.labels("ws").inc()
            await self._reply({"type": "dropped", "frame": replaced.id})
        self.wake.set()

    async def _frame_rejected(self, frame_id: int, reason: str, error: str) -> None:
        self.metrics.frame_errors.labels(reason).inc()
        await self._reply({"type": "error", "frame": frame_id, "error": error})

    async def _on_text(self, text: str) -> None:
        if len(text) > MAX_TEXT_CHARS:
            await self._text_error(f"text message too long (over {MAX_TEXT_CHARS} characters)")
            return
        try:
            message = json.loads(text)
        except ValueError:
            await self._text_error("text messages must be JSON objects; send frames as binary messages")
            return
        if not isinstance(message, dict):
            await self._text_error("text messages must be JSON objects")
            return
        kind = message.get("type")
        if kind == "ping":
            await self._reply({"type": "pong"})
        elif kind == "frame":
            frame_id = message.get("id")
            if isinstance(frame_id, bool) or not isinstance(frame_id, int) or not 0 <= frame_id <= MAX_FRAME_ID:
                await self._text_error("'id' of a frame message must be a non-negative integer")
            else:
                self.next_id = frame_id
        else:
            shown = json.dumps(kind)[:40] if kind is not None else "missing"
            await self._text_error(f"unknown message type {shown}; expected 'ping' or 'frame'")

    async def _text_error(self, error: str) -> None:
        self.metrics.frame_errors.labels("bad_message").inc()
        await self._reply({"type": "error", "error": error})

    # ------------------------------------------------------------------ worker (only sender)

    async def work_loop(self) -> None:
        try:
            await self._work()
        except Exception:
            logger.exception("worker of %s failed", self.peer)
            await close_socket(self.ws, WSCloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.worker_stopped = True
            self.room.set()  # a reader waiting for room must not wait forever

    async def _flush(self) -> bool:
        while self.outbox:
            payload = self.outbox.popleft()
            self.room.set()
            if not await self._send(payload):
                return False
        return True

    async def _work(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not await self._flush():
                return
            if len(self.mailbox):
                try:
                    frame = await self.mailbox.get()
                except MailboxClosed:
                    return
                reply = await self._analyse(frame)
                # Replies queued while the frame was analysed go first: they are older.
                if not await self._flush() or not await self._send(reply):
                    return
            elif self.mailbox.closed:
                return

    async def _analyse(self, frame: _Frame) -> dict[str, Any]:
        try:
            result: FrameResult = await self.batcher.submit(frame.data)
        except ImageError as exc:
            return self._frame_error(frame, "bad_image", str(exc))
        except BatcherOverloaded:
            return self._frame_error(frame, "busy", "server busy")
        except BatcherClosed:
            return self._frame_error(frame, "shutdown", "server shutting down")
        except Exception:
            # The batch handler has logged the traceback once for the whole batch.
            return self._frame_error(frame, "analysis_failed", "analysis failed")
        self.metrics.frame_done("ws", len(result.faces))
        payload = result.to_json()
        # Time of receipt, not of analysis: the smoothing follows the client's own frame rate.
        payload["faces"] = [face.to_json() for face in self.tracker.update(result.faces, frame.received)]
        payload["timings"] = server_timings(result, frame.received)
        return {"type": "result", "frame": frame.id, **payload, "dropped": self.dropped}

    def _frame_error(self, frame: _Frame, reason: str, error: str) -> dict[str, Any]:
        self.metrics.frame_errors.labels(reason).inc()
        return {"type": "error", "frame": frame.id, "error": error}

    async def _send(self, payload: dict[str, Any]) -> bool:
        """Send one JSON message; False when the socket is gone (or was closed for slowness)."""
        if self.ws.closed:
            return False
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.send_str(json.dumps(payload, separators=(",", ":")))
        except TimeoutError:
            logger.warning("%s has not read its replies for %.0f s; closing it", self.peer, SEND_TIMEOUT_S)
            self.evicting = True
            await close_socket(self.ws, WSCloseCode.POLICY_VIOLATION, "client too slow")
            return False
        except ConnectionResetError:
            return False
        return True


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Raise ImageError unless `data` starts like a JPEG/PNG of at most `max_pixels` pixels.

    Reads headers only (microseconds); the analyzer still decodes and checks for real.
    """
    width, height = image_size(data)
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


def server_timings(result: FrameResult, received: float) -> dict[str, float]:
    """The analyzer's per-stage timings plus the server-side queue and total, in ms."""
    timings = result.timings
    total = (time.perf_counter() - received) * 1000.0
    analysed = timings.get("total", timings.get("decode", 0.0) + timings.get("detect", 0.0) + timings.get("model", 0.0))
    return {
        "decode": round(timings.get("decode", 0.0), 2),
        "detect": round(timings.get("detect", 0.0), 2),
        "model": round(timings.get("model", 0.0), 2),
        "queue": round(max(0.0, total - analysed), 2),
        "total": round(total, 2),
    }


# The TCP transport under each open WebSocket, for close_socket's last resort.
_transports: weakref.WeakKeyDictionary[web.WebSocketResponse, asyncio.BaseTransport] = weakref.WeakKeyDictionary()


async def close_socket(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    """Close with `code`; abort the connection if the closing handshake does not finish in time.

    On timeout aiohttp only calls transport.close(), which waits until the unsent buffer has
    drained: for a peer that never reads, that is never, and its handler and client slot would
    linger. abort() drops the buffer and the connection at once.
    """
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close(code=code, message=reason.encode())
    except (TimeoutError, ConnectionResetError):
        abort_connection(ws)


def abort_connection(ws: web.WebSocketResponse) -> None:
    """Drop the TCP connection under `ws` at once, discarding whatever is still unsent."""
    transport = _transports.get(ws)
    if transport is not None and isinstance(transport, asyncio.WriteTransport):
        transport.abort()


def _limit_send_buffer(request: web.Request) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not origin_allowed(request, settings.allow_origins):
        logger.warning("refused WebSocket from %s: Origin %r", request.remote, request.headers.get("Origin"))
        return web.json_response({"error": "origin not allowed"}, status=403)

    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S,
        compress=False,  # JPEG does not deflate; compressing it only burns CPU
        max_msg_size=settings.max_frame_bytes * OVERSIZE_FACTOR,
        timeout=CLOSE_TIMEOUT_S,
    )
    await ws.prepare(request)
    _limit_send_buffer(request)
    if request.transport is not None:
        _transports[ws] = request.transport

    sockets = request.app[WEBSOCKETS]
    # No await between this check and add(): concurrent handshakes cannot overshoot.
    if len(sockets) >= settings.max_clients:
        logger.warning("refused %s: %d clients connected", request.remote, len(sockets))
        await close_socket(ws, WSCloseCode.TRY_AGAIN_LATER, f"server full ({settings.max_clients} clients)")
        return ws
    sockets.add(ws)
    metrics = request.app[METRICS]
    metrics.connected_clients.inc()

    client = ClientConnection(request, ws)
    await client.send_hello()
    worker = asyncio.create_task(client.work_loop(), name=f"ws-worker {client.peer}")
    logger.info("client %s connected (%d open)", client.peer, len(sockets))
    try:
        await client.read_loop()
    except ConnectionResetError:
        pass
    finally:
        client.mailbox.close()
        if client.evicting:
            # Let its close run out rather than cancel it half-way: close_socket aborts the
            # connection after CLOSE_TIMEOUT_S, a cancelled close() would leave it lingering.
            await asyncio.wait([worker], timeout=CLOSE_TIMEOUT_S + 1.0)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        if client.evicting:
            # Whatever state its close reached (the worker may have been cancelled mid-close),
            # unsent replies to a peer that never reads would never drain: drop the connection.
            abort_connection(ws)
        sockets.discard(ws)
        metrics.connected_clients.dec()
        if not ws.closed:
            await close_socket(ws, WSCloseCode.OK, "")
        logger.info(
            "client %s left: %d frames, %d dropped, close code %s",
            client.peer,
            client.frames_received,
            client.dropped,
            ws.close_code,
        )
    return ws
