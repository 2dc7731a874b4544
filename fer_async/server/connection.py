"""One WebSocket client from handshake to teardown; the protocol itself is in `protocol`.

A `Connection` owns everything of one client: its admission against `--max-clients`, its
TCP transport (so it can abort a peer that never reads), the reader (the handler task, the
only reader of the socket), the worker task (the only sender) and the teardown. `Connections`
is the app's set of open ones, which shutdown closes.

The reader validates each message (`protocol.parse_text`, `outcomes.check_frame`) and puts
frames into a one-slot `LatestMailbox`. The worker takes the newest frame, awaits the shared
batcher through `outcomes.submit` and sends every reply, so a slow or silent client can only
ever hold up itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web

from fer_async.config import Settings
from fer_async.mailbox import LatestMailbox, MailboxClosed
from fer_async.metrics import Metrics
from fer_async.pipeline import FramePipeline
from fer_async.server import protocol
from fer_async.server.outcomes import Reason, Refused, check_frame, refuse, server_timings, submit
from fer_async.server.peers import drop
from fer_async.tracker import tracker_for

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
# Replies waiting for the worker (pongs, errors, dropped notices). When it is full the reader
# stops reading until the worker has sent some: memory stays bounded, no reply is lost.
OUTBOX_LIMIT = 64
# Kernel send buffer per WebSocket. Linux autotunes it up to megabytes, which would let a
# client that never reads absorb minutes of replies before a send blocks; results are <1 KB,
# so 128 KB is hundreds of replies of slack for a slow link, and a bound on memory per client.
SEND_BUFFER_BYTES = 128 * 1024


@dataclass(frozen=True)
class _Frame:
    id: int
    data: bytes
    received: float  # time.perf_counter() when the message arrived


class Connections:
    """The app's open connections: admission against --max-clients, and closing them all."""

    def __init__(self) -> None:
        self._open: set[Connection] = set()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._open))

    def admit(self, connection: Connection, max_clients: int) -> bool:
        # Synchronous: concurrent handshakes cannot overshoot the limit.
        if len(self._open) >= max_clients:
            return False
        self._open.add(connection)
        return True

    def discard(self, connection: Connection) -> None:
        self._open.discard(connection)

    async def close_all(self, code: int, reason: str) -> None:
        await asyncio.gather(*(c.close(code, reason) for c in self), return_exceptions=True)


class Connection:
    """One WebSocket client: admission, the reader (handler task), its worker task, teardown."""

    _numbers = itertools.count()  # spreads the connections' full face detections over time (schedule)

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        settings: Settings,
        batcher: FramePipeline,
        metrics: Metrics,
    ) -> None:
        self.ws = ws
        self.transport = request.transport  # for abort(): aiohttp keeps no public handle on it
        self.peer = request.remote or "?"
        self.settings = settings
        self.batcher = batcher
        self.metrics = metrics
        self.ids = protocol.FrameIds()
        self.mailbox: LatestMailbox[_Frame] = LatestMailbox()
        self.outbox: collections.deque[protocol.Message] = collections.deque()
        # Set by the reader whenever there is something for the worker (a frame or a reply).
        self.wake = asyncio.Event()
        # Set by the worker when the outbox has room again, or when it has stopped.
        self.room = asyncio.Event()
        self.worker_stopped = False
        self.evicting = False  # the worker is closing the socket because the client stopped reading
        self.dropped = 0
        # Touched only by the worker, which analyses this connection's frames one at a time, in order.
        self.tracker = tracker_for(settings)
        self.schedule = settings.cadence.schedule(offset=next(Connection._numbers))

    @classmethod
    async def serve(
        cls,
        request: web.Request,
        *,
        settings: Settings,
        batcher: FramePipeline,
        metrics: Metrics,
        connections: Connections,
    ) -> web.WebSocketResponse:
        """Upgrade `request`, then serve the client until either side closes."""
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT_S,
            compress=False,  # JPEG does not deflate; compressing it only burns CPU
            max_msg_size=settings.max_frame_bytes * OVERSIZE_FACTOR,
            timeout=CLOSE_TIMEOUT_S,
        )
        await ws.prepare(request)
        connection = cls(request, ws, settings=settings, batcher=batcher, metrics=metrics)
        connection._limit_send_buffer()
        if not connections.admit(connection, settings.max_clients):
            logger.warning("refused %s: %d clients connected", connection.peer, len(connections))
            await connection.close(WSCloseCode.TRY_AGAIN_LATER, f"server full ({settings.max_clients} clients)")
            return ws
        metrics.connected_clients.inc()
        await connection._run(connections)
        return ws

    # ------------------------------------------------------------------ life

    async def _run(self, connections: Connections) -> None:
        open_count = len(connections)
        await self._reply(protocol.hello(self.settings.max_frame_bytes))
        worker = asyncio.create_task(self._work_loop(), name=f"ws-worker {self.peer}")
        logger.info("client %s connected (%d open)", self.peer, open_count)
        try:
            await self._read_loop()
        except ConnectionError:  # reset, or aiohttp's "Connection lost"
            pass
        finally:
            self.mailbox.close()
            if self.evicting:
                # Let its close run out rather than cancel it half-way: close() aborts the
                # connection after CLOSE_TIMEOUT_S, a cancelled close would leave it lingering.
                await asyncio.wait([worker], timeout=CLOSE_TIMEOUT_S + 1.0)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            if self.evicting:
                # Whatever state its close reached (the worker may have been cancelled mid-close),
                # unsent replies to a peer that never reads would never drain: drop the connection.
                self.abort()
            connections.discard(self)
            self.metrics.connected_clients.dec()
            if not self.ws.closed:
                await self.close(WSCloseCode.OK, "")
            logger.info(
                "client %s left: %d frames, %d dropped, close code %s",
                self.peer,
                self.ids.received,
                self.dropped,
                self.ws.close_code,
            )

    async def close(self, code: int, reason: str) -> None:
        """Close with `code`; abort the connection if the closing handshake does not finish in time.

        On timeout aiohttp only calls transport.close(), which waits until the unsent buffer has
        drained: for a peer that never reads, that is never, and its handler and client slot would
        linger. abort() drops the buffer and the connection at once.
        """
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once, discarding whatever is still unsent."""
        drop(self.transport)

    def _limit_send_buffer(self) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    # ------------------------------------------------------------------ reader (handler task)

    async def _read_loop(self) -> None:
        async for msg in self.ws:
            if self.worker_stopped:
                break  # nobody left to answer (the worker closed the socket or failed)
            if msg.type is WSMsgType.BINARY:
                started = time.perf_counter()
                await self._on_frame(msg.data)
                self.metrics.observe_stage("receive", time.perf_counter() - started)
            elif msg.type is WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type is WSMsgType.ERROR:
                # aiohttp has already started closing (e.g. 1009 for an over-size message).
                # The close code may not be set yet: the error itself carries it (WebSocketError.code).
                code = getattr(msg.data, "code", None) or self.ws.close_code
                too_big = code == WSCloseCode.MESSAGE_TOO_BIG
                refuse(self.metrics, Reason.TOO_LARGE if too_big else Reason.PROTOCOL, str(msg.data))
                logger.info("closing %s: %s", self.peer, msg.data)
                break

    async def _reply(self, message: protocol.Message) -> None:
        """Queue a reply for the worker; waits (stops reading the socket) while the outbox is full.

        That wait is TCP back-pressure on a client that sends faster than it reads its replies:
        its own sends stall, every message still gets its reply, and if it never reads at all,
        the worker's send times out and the socket is closed (1008).
        """
        while len(self.outbox) >= OUTBOX_LIMIT and not self.worker_stopped:
            self.room.clear()
            await self.room.wait()
        self.outbox.append(message)
        self.wake.set()

    async def _on_frame(self, data: bytes) -> None:
        frame_id = self.ids.take()
        # Cheap checks here, so junk never takes a batch slot or displaces a good frame.
        refused = check_frame(self.metrics, data, self.settings.max_frame_bytes, self.settings.max_pixels)
        if refused is not None:
            await self._reply(protocol.error(refused.message, frame_id))
            return
        replaced = self.mailbox.put(_Frame(frame_id, data, time.perf_counter()))
        if replaced is not None:
            self.dropped += 1
            self.metrics.frames_dropped.labels("ws").inc()
            await self._reply(protocol.dropped(replaced.id))
        self.wake.set()

    async def _on_text(self, text: str) -> None:
        action = protocol.parse_text(text)
        if isinstance(action, protocol.Ping):
            await self._reply(protocol.pong())
        elif isinstance(action, protocol.NextFrameId):
            self.ids.name_next(action.id)
        else:
            refuse(self.metrics, Reason.BAD_MESSAGE, action.error)
            await self._reply(protocol.error(action.error))

    # ------------------------------------------------------------------ worker (only sender)

    async def _work_loop(self) -> None:
        try:
            await self._work()
        except Exception:
            logger.exception("worker of %s failed", self.peer)
            await self.close(WSCloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.worker_stopped = True
            self.room.set()  # a reader waiting for room must not wait forever

    async def _flush(self) -> bool:
        while self.outbox:
            message = self.outbox.popleft()
            self.room.set()
            if not await self._send(message):
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
                if not await self._flush():
                    return
                started = time.perf_counter()
                sent = await self._send(reply)
                self.metrics.observe_stage("send", time.perf_counter() - started)
                if not sent:
                    return
            elif self.mailbox.closed:
                return

    async def _analyse(self, frame: _Frame) -> str:
        """The reply to `frame`, already encoded (so its JSON cost is measured here, not in send)."""
        schedule = self.schedule
        outcome = await submit(self.batcher, self.metrics, "ws", frame.data, schedule.plan())
        if isinstance(outcome, Refused):
            return protocol.encode(protocol.error(outcome.message, frame.id))
        schedule.observe(outcome.width, outcome.height, [face.box for face in outcome.faces])
        started = time.perf_counter()
        payload = outcome.to_json()
        # Time of receipt, not of analysis: the smoothing follows the client's own frame rate.
        payload["faces"] = [face.to_json() for face in self.tracker.update(outcome.faces, frame.received)]
        payload["timings"] = server_timings(outcome, frame.received)
        text = protocol.encode(protocol.result(frame.id, payload, self.dropped))
        self.metrics.observe_stage("json", time.perf_counter() - started)
        return text

    async def _send(self, message: protocol.Message | str) -> bool:
        """Send one JSON message (or its text); False when the socket is gone (or was closed for slowness)."""
        if self.ws.closed:
            return False
        text = message if isinstance(message, str) else protocol.encode(message)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.send_str(text)
        except TimeoutError:
            logger.warning("%s has not read its replies for %.0f s; closing it", self.peer, SEND_TIMEOUT_S)
            self.evicting = True
            await self.close(WSCloseCode.POLICY_VIOLATION, "client too slow")
            return False
        except ConnectionError:  # reset, or aiohttp's "Connection lost"
            return False
        return True
