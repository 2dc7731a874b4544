"""The WebSocket protocol of `/ws`, as pure functions: messages in, actions and replies out.

Nothing here touches a socket, so every rule below is unit-tested without one
(tests/server/test_protocol.py); `fer_async.server.connection` applies them to a real socket.

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

  Boxes are ``[x, y, w, h]`` in the frame's own pixels, faces largest first; scores follow
  the order of ``emotions``. Faces are tracked along the connection (`fer_async.tracker`):
  ``id`` stays the same while the face stays in view, ``scores`` are smoothed over
  ``--smoothing-ms`` of the track (``raw_scores`` are this frame's own), and ``emotion``
  changes only when another class leads the shown one by ``--label-margin``. ``total`` is
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
  corrupt or truncated, has too many pixels or JPEG scans (64), or exceeds ``max_frame_bytes``; with ``"error": "server
  busy"`` when the analysis queue is full (send again later), ``"inference server
  unavailable"`` while the ``--executor`` server cannot be reached or misses its deadline (send
  again later; ``/healthz`` says why), ``"analysis failed"`` when the model failed on that
  frame's batch (details are only logged on the server), ``"server shutting down"`` during
  shutdown. Text messages other than the ones below (not JSON, not an
  object, unknown ``type``, too long) get ``{"type": "error", "error": "..."}`` without a frame.
* ``{"type": "ping"}`` → ``{"type": "pong"}``.
* Back-pressure: when 64 replies are waiting to be sent, the server stops reading the
  socket until the client has taken some, so a client that sends faster than it reads is
  slowed down by TCP rather than buffered for.
* Close codes from the server: 1001 server shutting down, 1008 client does not read its
  replies (a send blocked for more than a few seconds), 1009 message larger than twice
  ``max_frame_bytes`` (refused before it is buffered; smaller oversize frames only get an
  error), 1013 server full. The server pings every 20 s and drops peers that do not answer. Messages are not
  compressed (JPEG does not deflate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yarl

from fer_async.labels import EMOTIONS

# Control messages are tiny; a longer text message is a client bug, not worth parsing.
MAX_TEXT_CHARS = 1024
MAX_FRAME_ID = 2**53 - 1  # the largest integer a JavaScript number holds exactly

Message = dict[str, Any]


# ------------------------------------------------------------------------ text messages


@dataclass(frozen=True)
class Ping:
    """Answer with a pong."""


@dataclass(frozen=True)
class NextFrameId:
    """The next binary frame takes this id."""

    id: int


@dataclass(frozen=True)
class BadMessage:
    """Answer with a frame-less error; the connection stays open."""

    error: str


TextAction = Ping | NextFrameId | BadMessage


def parse_text(text: str) -> TextAction:
    """What a text message from the client asks for."""
    if len(text) > MAX_TEXT_CHARS:
        return BadMessage(f"text message too long (over {MAX_TEXT_CHARS} characters)")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: [[[[... nested deeper than the parser goes
        return BadMessage("text messages must be JSON objects; send frames as binary messages")
    if not isinstance(message, dict):
        return BadMessage("text messages must be JSON objects")
    kind = message.get("type")
    if kind == "ping":
        return Ping()
    if kind == "frame":
        frame_id = message.get("id")
        if isinstance(frame_id, bool) or not isinstance(frame_id, int) or not 0 <= frame_id <= MAX_FRAME_ID:
            return BadMessage("'id' of a frame message must be a non-negative integer")
        return NextFrameId(frame_id)
    shown = json.dumps(kind)[:40] if kind is not None else "missing"
    return BadMessage(f"unknown message type {shown}; expected 'ping' or 'frame'")


class FrameIds:
    """Frame ids of one connection: the count of binary messages, unless a frame message named one."""

    def __init__(self) -> None:
        self.received = 0
        self._next: int | None = None

    def name_next(self, frame_id: int) -> None:
        self._next = frame_id

    def take(self) -> int:
        """The id of the binary message that just arrived (the count goes on regardless)."""
        self.received += 1
        frame_id = self.received if self._next is None else self._next
        self._next = None
        return frame_id


# ------------------------------------------------------------------------------ replies


def hello(max_frame_bytes: int) -> Message:
    return {"type": "hello", "emotions": list(EMOTIONS), "max_frame_bytes": max_frame_bytes}


def pong() -> Message:
    return {"type": "pong"}


def dropped(frame_id: int) -> Message:
    return {"type": "dropped", "frame": frame_id}


def error(message: str, frame_id: int | None = None) -> Message:
    """An error about one frame, or (frame_id None) about a text message."""
    if frame_id is None:
        return {"type": "error", "error": message}
    return {"type": "error", "frame": frame_id, "error": message}


def result(frame_id: int, payload: Message, dropped_so_far: int) -> Message:
    """A frame's result: `payload` is FrameResult.to_json() with the server timings."""
    return {"type": "result", "frame": frame_id, **payload, "dropped": dropped_so_far}


def encode(message: Message) -> str:
    return json.dumps(message, separators=(",", ":"))


# ---------------------------------------------------------------------------- handshake


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


def origin_allowed(origin: str | None, scheme: str, host: str, allowed: tuple[str, ...]) -> bool:
    """Same-origin, or listed in `allowed` ('*' = any); a handshake without Origin passes.

    `scheme` and `host` are the request's own (its URL scheme and Host header). Browsers always
    send Origin on WebSocket handshakes, so this stops other web sites from using a visitor's
    browser to reach the server (cross-site WebSocket hijacking). Non-browser clients are not
    what an Origin check can stop, so they may omit it.
    """
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
    host_url = _origin_key(f"{scheme}://{host}")
    return host_url is not None and key.split("://", 1)[1] == host_url.split("://", 1)[1]
