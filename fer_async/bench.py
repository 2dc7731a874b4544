"""Load generator for the WebSocket endpoint, plus the compute bound it is compared against.

    python -m fer_async.bench --clients 16 --duration 30
    python -m fer_async.bench --sweep 1,4,16,64 --duration 20 --max-batch 16 --max-wait-ms 5
    python -m fer_async.bench --raw --max-batch 16 --duration 20
    python -m fer_async.bench --url ws://127.0.0.1:8080/ws --clients 8 --duration 30
    python -m fer_async.bench --soak --churn --clients 16 --duration 600

Each client keeps exactly ONE real face frame in flight: it sends a 640x480 JPEG (the
astronaut photo of `skimage.data`, placed at a different spot per client), waits for the
reply to that frame (`result`, `error` or `dropped`), then sends the next. So the server's
throughput is measured closed-loop, and the latency is what one browser tab would see.

Where the server runs. Without `--url` the bench starts the real server as a SUBPROCESS,
`python -m fer_async --host 127.0.0.1 --port <free> ...`, and waits for `/healthz`. Not in
this process on purpose: the load generator (JSON parsing, WebSocket framing for up to a few
hundred clients) costs CPU too, and in one process it would share the GIL and the event loop
with the server and distort both sides. A subprocess also gives the soak mode a clean server
RSS to watch (`/proc/<pid>/status`), and it is exactly how the service runs in production.
`--in-process` starts it on an `AppRunner` in this process instead (for debugging).

What is printed. A table on stdout, one row per client count, then as the LAST line one
JSON object with at least `clients, frames, fps, p50_ms, p99_ms, mean_batch, dropped`.
With `--sweep` that object describes the last row and carries every row under `"rows"`.
`mean_batch` is read from the server's `/metrics` (the batch-size histogram's
sum/count delta over the measured window); `null` when the server does not export it.

`--raw` skips the server: the same frames go straight through `Analyzer.analyze` in batches
of `--max-batch` (real model, real detector, this process), which is the fps the server
could at best reach on this machine.

`--soak` runs for `--duration` seconds (bounded), samples the server's RSS at the start,
every `--rss-interval` seconds and at the end; with `--churn` clients come and go
continuously (random lifetimes of `--lifetime` seconds, some closing with a frame in flight).
Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import cv2
import numpy as np

logger = logging.getLogger("fer_async.bench")  # not "__main__" under python -m

FRAME_WIDTH, FRAME_HEIGHT = 640, 480  # a common webcam frame
FACE_SIDE = 400  # the 512 px astronaut photo is shrunk to this; her face is then ~75 px wide
JPEG_QUALITY = 85  # what a browser's canvas.toBlob("image/jpeg", 0.85) sends
FRAMES_PER_CLIENT = 4  # a few positions per client, cycled, so the detector sees motion
# TensorFlow import + model load + warm-up; on a 2-core box shared with training this takes
# far longer than on an idle machine, and a bench that gives up early is useless.
SERVER_START_TIMEOUT_S = 300.0
SERVER_STOP_TIMEOUT_S = 30.0  # graceful shutdown closes sockets (1001) and drains the batcher
REPLY_TIMEOUT_S = 30.0  # a reply slower than this is counted as a timeout, and the client moves on
CONNECT_TIMEOUT_S = 30.0
DEFAULT_WARMUP_S = 3.0
DEFAULT_RSS_INTERVAL_S = 60.0
DEFAULT_LIFETIME_S = (1.0, 6.0)  # --churn: each connection lives uniform(lo, hi) seconds
MAX_CLIENTS = 1024  # a sanity bound on --clients / --sweep entries
MAX_DURATION_S = 24 * 3600.0  # everything stops by itself
RESULT_KINDS = ("result", "error", "dropped")


# --------------------------------------------------------------------------------------- frames


def _background(width: int, height: int, seed: int) -> np.ndarray:
    """A soft, face-free colour gradient with a little sensor noise (BGR uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 180, size=3).astype(np.float32)
    tilt = rng.uniform(-50, 50, size=(3, 2)).astype(np.float32)
    channels = [base[c] + tilt[c, 0] * xx / width + tilt[c, 1] * yy / height for c in range(3)]
    image = np.stack(channels, axis=-1) + rng.normal(0.0, 3.0, size=(height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def astronaut_bgr() -> np.ndarray:
    """skimage's astronaut photo (Eileen Collins, a real frontal face), as BGR uint8."""
    try:
        from skimage import data as skdata
    except ImportError as exc:  # scikit-image is a dev extra, not a server dependency
        raise SystemExit("the bench needs scikit-image for its face photos: pip install -e '.[dev]'") from exc
    return cv2.cvtColor(np.asarray(skdata.astronaut()), cv2.COLOR_RGB2BGR)


def compose_frame(
    photo: np.ndarray,
    x: int,
    y: int,
    *,
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
    side: int = FACE_SIDE,
    seed: int = 0,
) -> np.ndarray:
    """`photo` shrunk to `side` x `side` and pasted at (x, y) on a gradient background (BGR)."""
    frame = _background(width, height, seed)
    small = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    x0, y0 = max(0, min(x, width - side)), max(0, min(y, height - side))
    frame[y0 : y0 + side, x0 : x0 + side] = small[: height - y0, : width - x0]
    return frame


def frame_position(
    index: int, *, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, side: int = FACE_SIDE
) -> tuple[int, int]:
    """A deterministic, well-spread paste position for frame number `index`."""
    rng = random.Random(index)
    return rng.randint(0, max(0, width - side)), rng.randint(0, max(0, height - side))


def make_frames(count: int, *, first: int = 0, quality: int = JPEG_QUALITY) -> list[bytes]:
    """`count` distinct 640x480 JPEGs, each with one real face at a different position."""
    photo = astronaut_bgr()
    frames = []
    for index in range(first, first + count):
        x, y = frame_position(index)
        frame = compose_frame(photo, x, y, seed=index)
        ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        frames.append(buffer.tobytes())
    return frames


# ------------------------------------------------------------------------------ measurements


@dataclass
class Reply:
    """One answered frame: when it came back, how long it took, and what it was."""

    received: float  # loop.time()
    latency_ms: float
    kind: str  # result | error | dropped | timeout


@dataclass
class LoadStats:
    """Everything the clients of one run saw; aggregated over a time window afterwards."""

    replies: list[Reply] = field(default_factory=list)
    sent: int = 0
    connects: int = 0
    connect_failures: int = 0
    closes: dict[str, int] = field(default_factory=dict)  # close code -> count, unexpected closes
    server_dropped: int = 0  # sum of increases of the `dropped` counter in results
    error_samples: list[str] = field(default_factory=list)

    def note_error(self, text: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:200])


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation), None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def parse_histogram(text: str, needle: str = "batch_size") -> tuple[float, float] | None:
    """(sum, count) of the Prometheus histogram/summary whose name contains `needle`.

    Sums over label sets; `None` when no such metric is exported.
    """
    total: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match:
            continue
        name, value = match.group(1), match.group(3)
        if needle not in name:
            continue
        for suffix in ("_sum", "_count"):
            if name.endswith(suffix):
                with contextlib.suppress(ValueError):
                    total[suffix] = total.get(suffix, 0.0) + float(value)
    if "_sum" not in total or "_count" not in total:
        return None
    return total["_sum"], total["_count"]


def rss_kb(pid: int) -> int | None:
    """VmRSS of process `pid` in kB (Linux), None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ------------------------------------------------------------------------------------ server


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_loopback(url: str) -> None:
    """Refuse to load anything but this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"the bench only talks to loopback addresses, not {host!r}")


class Server:
    """The real server as a subprocess: `python -m fer_async --host 127.0.0.1 --port P ...`."""

    def __init__(self, args: Sequence[str], *, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, limit: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode("utf-8", "replace")

    async def start(self, wait_s: float = SERVER_START_TIMEOUT_S) -> None:
        # The server's output goes to an anonymous temp file: a pipe nobody reads would fill
        # up and block the server; the tail is shown when it fails to start.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server, closed in stop()
        cmd = [sys.executable, "-m", "fer_async", *self.args]
        logger.info("starting server: %s", " ".join(cmd))
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        deadline = time.monotonic() + wait_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.base_url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        if resp.status == 200:
                            logger.info("server pid %d ready on port %d", self.proc.pid, self.port)
                            return
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    await self.stop()
                    raise RuntimeError(f"server not healthy after {wait_s:.0f} s:\n{tail}")
                await asyncio.sleep(0.5)

    async def stop(self) -> int | None:
        """SIGINT (graceful shutdown), then SIGTERM, then SIGKILL; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        last_sent: signal.Signals | None = None
        for sig, wait_s in ((signal.SIGINT, SERVER_STOP_TIMEOUT_S), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
                last_sent = sig
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=wait_s)
        if last_sent not in (None, signal.SIGINT):
            logger.warning("the server did not stop on SIGINT; it took %s", last_sent)
        code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None
        return code


class InProcessServer:
    """The real app on an AppRunner in this process (debugging; shares the GIL with the load)."""

    def __init__(self, args: argparse.Namespace, clients: int) -> None:
        self.port = free_port()
        self.ns = args
        self.clients = clients
        self.runner: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return os.getpid()

    def log_tail(self, limit: int = 4000) -> str:
        return ""

    async def start(self, wait_s: float = SERVER_START_TIMEOUT_S) -> None:
        from aiohttp import web

        from fer_async.config import Settings
        from fer_async.server.app import create_app

        settings = Settings.from_args(_server_args(self.ns, port=self.port, clients=self.clients))
        self.runner = web.AppRunner(create_app(settings))
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> int | None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        return 0


async def fetch_batch_histogram(session: aiohttp.ClientSession, base_url: str) -> tuple[float, float] | None:
    """(sum, count) of the server's batch-size histogram, None when unavailable."""
    try:
        async with session.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                return None
            return parse_histogram(await resp.text())
    except (aiohttp.ClientError, TimeoutError):
        return None


# ----------------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class ClientPlan:
    """How one client slot behaves."""

    url: str
    frames: Sequence[bytes]
    stop_at: float  # loop.time() at which the slot stops sending
    origin: str | None
    lifetime: tuple[float, float] | None = None  # --churn: reconnect after uniform(lo, hi) s
    seed: int = 0


async def _await_reply(
    ws: aiohttp.ClientWebSocketResponse, frame_id: int, within_s: float
) -> tuple[str, dict[str, Any]]:
    """Read messages until the reply to `frame_id` (or a close); returns (kind, message)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return "timeout", {}
        try:
            msg = await ws.receive(timeout=remaining)
        except TimeoutError:
            return "timeout", {}
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return "closed", {"code": ws.close_code}
        if msg.type == aiohttp.WSMsgType.ERROR:
            return "closed", {"code": ws.close_code, "error": str(msg.data)}
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        try:
            data = json.loads(msg.data)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if kind in RESULT_KINDS and data.get("frame") == frame_id:
            return str(kind), data
        if kind == "error" and "frame" not in data:
            return "error", data  # a connection-level error answers whatever was in flight


async def client_slot(session: aiohttp.ClientSession, plan: ClientPlan, stats: LoadStats) -> None:
    """One simulated browser tab (or, with churn, a sequence of them)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(plan.seed)
    frame_index = rng.randrange(len(plan.frames))
    while loop.time() < plan.stop_at:
        ends_at = plan.stop_at
        if plan.lifetime is not None:
            ends_at = min(ends_at, loop.time() + rng.uniform(*plan.lifetime))
        try:
            ws = await session.ws_connect(
                plan.url,
                origin=plan.origin,
                compress=0,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                autoping=True,
                heartbeat=None,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            stats.connect_failures += 1
            stats.note_error(f"connect: {exc!r}")
            await asyncio.sleep(min(1.0, max(0.0, plan.stop_at - loop.time())))
            continue
        stats.connects += 1
        # With churn, some connections close with a frame still in flight: the server must cope.
        leave_in_flight = plan.lifetime is not None and rng.random() < 0.3
        frame_id, last_dropped = 0, 0
        try:
            while loop.time() < ends_at:
                frame_id += 1
                sent_at = loop.time()
                await ws.send_bytes(plan.frames[frame_index])
                frame_index = (frame_index + 1) % len(plan.frames)
                stats.sent += 1
                if leave_in_flight and loop.time() + 0.5 > ends_at:
                    break
                kind, data = await _await_reply(ws, frame_id, REPLY_TIMEOUT_S)
                now = loop.time()
                if kind == "closed":
                    code = str(data.get("code"))
                    stats.closes[code] = stats.closes.get(code, 0) + 1
                    stats.note_error(f"closed by server: {data}")
                    break
                stats.replies.append(Reply(now, (now - sent_at) * 1000.0, kind))
                if kind == "error":
                    stats.note_error(str(data.get("error")))
                dropped = data.get("dropped")
                if isinstance(dropped, int) and dropped > last_dropped:
                    stats.server_dropped += dropped - last_dropped
                    last_dropped = dropped
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            stats.closes["exception"] = stats.closes.get("exception", 0) + 1
            stats.note_error(f"socket: {exc!r}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=5.0)


async def _wait_for_hello(session: aiohttp.ClientSession, url: str, origin: str | None) -> dict[str, Any]:
    """Connect once, return the server's hello message (also proves /ws answers)."""
    async with session.ws_connect(url, origin=origin, compress=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)) as ws:
        msg = await ws.receive(timeout=CONNECT_TIMEOUT_S)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"expected a hello text message, got {msg.type!r} {msg.data!r}")
        hello = json.loads(msg.data)
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise RuntimeError(f"expected a hello message, got {hello!r}")
        return hello


# ------------------------------------------------------------------------------------- runs


@dataclass
class RunConfig:
    url: str
    base_url: str
    origin: str | None
    clients: int
    warmup_s: float
    duration_s: float
    frames: Sequence[bytes]
    lifetime: tuple[float, float] | None = None
    rss_pid: int | None = None
    rss_interval_s: float = DEFAULT_RSS_INTERVAL_S


def summarize(stats: LoadStats, window: tuple[float, float], clients: int, mean_batch: float | None) -> dict[str, Any]:
    """One row: frames answered inside the window, fps, latency percentiles of results."""
    start, end = window
    inside = [r for r in stats.replies if start <= r.received <= end]
    latencies = [r.latency_ms for r in inside if r.kind == "result"]
    counts = {kind: sum(1 for r in inside if r.kind == kind) for kind in (*RESULT_KINDS, "timeout")}
    seconds = max(1e-9, end - start)
    return {
        "clients": clients,
        "frames": counts["result"],
        "fps": round(counts["result"] / seconds, 2),
        "p50_ms": _round(percentile(latencies, 50)),
        "p95_ms": _round(percentile(latencies, 95)),
        "p99_ms": _round(percentile(latencies, 99)),
        "mean_ms": _round(float(np.mean(latencies)) if latencies else None),
        "mean_batch": _round(mean_batch, 2),
        # The server both notifies ({"type": "dropped"}) and counts ("dropped" in results) each
        # replaced frame; notices may be capped under a flood, so take the larger of the two.
        "dropped": max(counts["dropped"], stats.server_dropped),
        "errors": counts["error"],
        "timeouts": counts["timeout"],
        "seconds": round(seconds, 2),
        "sent": stats.sent,
        "connects": stats.connects,
        "connect_failures": stats.connect_failures,
        "closes": dict(stats.closes),
    }


async def _sample_rss(
    pid: int, interval: float, stop: asyncio.Event, samples: list[tuple[float, int]], t0: float
) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        value = rss_kb(pid)
        if value is not None:
            elapsed = loop.time() - t0
            samples.append((elapsed, value))
            _emit(f"server RSS at {elapsed:5.0f} s: {value / 1024:.1f} MB")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def run_load(session: aiohttp.ClientSession, cfg: RunConfig) -> dict[str, Any]:
    """N client slots for warm-up + duration; returns the summary row of the measured window."""
    loop = asyncio.get_running_loop()
    stats = LoadStats()
    t_begin = loop.time()
    measure_from = t_begin + cfg.warmup_s
    stop_at = measure_from + cfg.duration_s
    plans = [ClientPlan(cfg.url, cfg.frames, stop_at, cfg.origin, cfg.lifetime, seed=i) for i in range(cfg.clients)]
    logger.info(
        "%d clients: %.0f s warm-up + %.0f s measured%s",
        cfg.clients,
        cfg.warmup_s,
        cfg.duration_s,
        " (churn)" if cfg.lifetime else "",
    )
    tasks = [asyncio.create_task(client_slot(session, plan, stats)) for plan in plans]

    rss_samples: list[tuple[float, int]] = []
    rss_stop = asyncio.Event()
    rss_task: asyncio.Task[None] | None = None
    try:
        await asyncio.sleep(cfg.warmup_s)
        hist_start = await fetch_batch_histogram(session, cfg.base_url)
        window_start = loop.time()
        if cfg.rss_pid is not None:
            rss_task = asyncio.create_task(
                _sample_rss(cfg.rss_pid, cfg.rss_interval_s, rss_stop, rss_samples, window_start)
            )
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        window_end = loop.time()
        hist_end = await fetch_batch_histogram(session, cfg.base_url)
        # Stragglers: every slot stops at stop_at and waits at most one reply timeout.
        done, pending = await asyncio.wait(tasks, timeout=REPLY_TIMEOUT_S + 10.0)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.warning("client task failed: %r", task.exception())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rss_stop.set()
        if rss_task is not None:
            await rss_task
    if cfg.rss_pid is not None:
        end_value = rss_kb(cfg.rss_pid)
        if end_value is not None:
            rss_samples.append((loop.time() - window_start, end_value))
            _emit(f"server RSS at end: {end_value / 1024:.1f} MB")

    mean_batch = None
    if hist_start is not None and hist_end is not None and hist_end[1] > hist_start[1]:
        mean_batch = (hist_end[0] - hist_start[0]) / (hist_end[1] - hist_start[1])
    row = summarize(stats, (window_start, window_end), cfg.clients, mean_batch)
    if stats.error_samples:
        row["error_samples"] = stats.error_samples
    if cfg.rss_pid is not None and rss_samples:
        values = [kb for _, kb in rss_samples]
        row["rss_start_mb"] = round(values[0] / 1024, 1)
        row["rss_end_mb"] = round(values[-1] / 1024, 1)
        row["rss_max_mb"] = round(max(values) / 1024, 1)
        row["rss_samples_mb"] = [[round(t, 1), round(kb / 1024, 1)] for t, kb in rss_samples]
    return row


# -------------------------------------------------------------------------------------- raw


def run_raw(ns: argparse.Namespace, frames: Sequence[bytes]) -> dict[str, Any]:
    """The compute bound: frames straight through Analyzer.analyze, batches of --max-batch.

    Built like the server builds it (real model, real detector, the analyzer's own detection
    threads), in this process and on this thread; no sockets, no JSON, no batcher waits.
    """
    from fer_async.analyzer import Analyzer
    from fer_async.config import DEFAULT_WEIGHTS_DIR
    from fer_async.detector import create_detector
    from fer_async.model import FacialExpressionModel

    model = FacialExpressionModel(ns.weights or DEFAULT_WEIGHTS_DIR)
    detector = create_detector(ns.detector or "haar", ns.detector_model)
    batch = ns.max_batch
    frames_done = errors = offset = 0
    latencies: list[float] = []
    with Analyzer(model, detector) as analyzer:

        def one_batch() -> tuple[float, int]:
            nonlocal offset
            chunk = [frames[(offset + i) % len(frames)] for i in range(batch)]
            offset += batch
            started = time.perf_counter()
            results = analyzer.analyze(chunk)
            failed = sum(1 for r in results if isinstance(r, Exception) or not r.faces)
            return (time.perf_counter() - started) * 1000.0, failed

        warm_until = time.perf_counter() + ns.warmup
        one_batch()  # at least one, so the first measured batch never pays a first-call cost
        while time.perf_counter() < warm_until:
            one_batch()
        started = time.perf_counter()
        end = started + ns.duration
        while time.perf_counter() < end or not latencies:
            elapsed_ms, failed = one_batch()
            latencies.append(elapsed_ms)
            frames_done += batch
            errors += failed
        seconds = time.perf_counter() - started
    return {
        "mode": "raw",
        "clients": 0,
        "frames": frames_done,
        "fps": round(frames_done / seconds, 2),
        # Per batch of --max-batch frames, not per frame.
        "p50_ms": _round(percentile(latencies, 50)),
        "p95_ms": _round(percentile(latencies, 95)),
        "p99_ms": _round(percentile(latencies, 99)),
        "mean_ms": _round(float(np.mean(latencies))),
        "mean_batch": float(batch),
        "dropped": 0,
        "errors": errors,  # frames that failed or had no face (should be 0: each has one)
        "timeouts": 0,
        "seconds": round(seconds, 2),
    }


# ------------------------------------------------------------------------------------ output


COLUMNS = (
    ("clients", "clients", 7),
    ("frames", "frames", 7),
    ("fps", "fps", 8),
    ("p50_ms", "p50 ms", 8),
    ("p95_ms", "p95 ms", 8),
    ("p99_ms", "p99 ms", 8),
    ("mean_batch", "batch", 6),
    ("dropped", "dropped", 8),
    ("errors", "errors", 7),
    ("timeouts", "t/o", 4),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    header = " ".join(title.rjust(width) for _, title, width in COLUMNS)
    lines = [header, "-" * len(header)]
    lines += [" ".join(cell(row.get(key)).rjust(width) for key, _, width in COLUMNS) for row in rows]
    return "\n".join(lines)


def _emit(text: str) -> None:
    """The bench's product goes to stdout (progress goes to the log, on stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------------------------------- CLI


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_DURATION_S:.0f}]")
    return value


def _client_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CLIENTS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_CLIENTS}")
    return value


def _sweep(text: str) -> list[int]:
    try:
        counts = [_client_count(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated client counts, got {text!r}") from exc
    if not counts:
        raise argparse.ArgumentTypeError("empty sweep")
    return counts


def _lifetime(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    low, high = float(lo), float(hi or lo)
    if not 0 < low <= high <= 3600:
        raise argparse.ArgumentTypeError("expected LO,HI seconds with 0 < LO <= HI <= 3600")
    return low, high


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fer_async.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--clients", type=_client_count, default=8, help="concurrent WebSocket clients (default %(default)s)"
    )
    p.add_argument(
        "--duration", type=_positive_float, default=20.0, help="measured seconds per run (default %(default)s)"
    )
    p.add_argument(
        "--warmup", type=float, default=DEFAULT_WARMUP_S, help="unmeasured seconds first (default %(default)s)"
    )
    p.add_argument("--sweep", type=_sweep, help="comma-separated client counts, one row each, against one server")
    p.add_argument("--url", help="an already running server's ws://127.0.0.1:PORT/ws (no server is started)")
    p.add_argument("--origin", help="Origin header to send (default: the server's own http://host:port)")
    p.add_argument("--raw", action="store_true", help="no server: Analyzer.analyze directly, batches of --max-batch")
    p.add_argument("--in-process", action="store_true", help="run the started server in this process (debugging)")
    p.add_argument(
        "--max-batch", type=int, default=16, help="server --max-batch / raw batch size (default %(default)s)"
    )
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms (default %(default)s)")
    p.add_argument("--weights", help="server --weights DIR")
    p.add_argument("--detector", choices=("haar", "yunet"), help="server --detector")
    p.add_argument("--detector-model", help="server --detector-model PATH")
    p.add_argument(
        "--server-arg", action="append", default=[], help="extra argument for the started server (repeatable)"
    )
    p.add_argument(
        "--frames", type=int, default=FRAMES_PER_CLIENT * 8, help="distinct JPEGs to cycle (default %(default)s)"
    )
    p.add_argument("--soak", action="store_true", help="long run that samples the server's RSS")
    p.add_argument("--churn", action="store_true", help="clients join and leave continuously")
    p.add_argument(
        "--lifetime", type=_lifetime, default=DEFAULT_LIFETIME_S, help="churn lifetimes LO,HI s (default 1,6)"
    )
    p.add_argument(
        "--rss-interval", type=_positive_float, default=DEFAULT_RSS_INTERVAL_S, help="soak RSS sampling period, s"
    )
    p.add_argument("--server-pid", type=int, help="with --url: pid of that server, for RSS sampling")
    p.add_argument("-v", "--verbose", action="store_true")
    ns = p.parse_args(argv)
    if ns.warmup < 0:
        p.error("--warmup must be >= 0")
    if not 1 <= ns.max_batch <= 4096:
        p.error("--max-batch must be 1..4096")
    if ns.url:
        check_loopback(ns.url)
    if ns.raw and (ns.url or ns.sweep or ns.soak):
        p.error("--raw does not combine with --url, --sweep or --soak")
    return ns


def _server_args(ns: argparse.Namespace, *, port: int | None = None, clients: int = 0) -> list[str]:
    args = [
        "--max-batch",
        str(ns.max_batch),
        "--max-wait-ms",
        f"{ns.max_wait_ms:g}",
        # Room for every bench client plus the /metrics probe and a spare.
        "--max-clients",
        str(max(64, clients + 8)),
    ]
    if port is not None:
        args = ["--host", "127.0.0.1", "--port", str(port), *args]
    if ns.weights:
        args += ["--weights", ns.weights]
    if ns.detector:
        args += ["--detector", ns.detector]
    if ns.detector_model:
        args += ["--detector-model", ns.detector_model]
    return [*args, *ns.server_arg]


async def _run_server_mode(ns: argparse.Namespace, frames: Sequence[bytes]) -> list[dict[str, Any]]:
    counts: list[int] = ns.sweep or [ns.clients]
    server: Server | InProcessServer | None = None
    url = ns.url
    rss_pid = ns.server_pid
    if url is None:
        server = InProcessServer(ns, max(counts)) if ns.in_process else Server(_server_args(ns, clients=max(counts)))
        await server.start()
        url = server.base_url.replace("http://", "ws://") + "/ws"
        rss_pid = server.pid
    parts = urlsplit(url)
    base_url = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    origin = ns.origin or base_url
    rows: list[dict[str, Any]] = []
    try:
        connector = aiohttp.TCPConnector(limit=0)  # WebSockets hold their connection: no pool cap
        async with aiohttp.ClientSession(connector=connector) as session:
            hello = await _wait_for_hello(session, url, origin)
            logger.info("server hello: %s", json.dumps(hello)[:300])
            for count in counts:
                cfg = RunConfig(
                    url=url,
                    base_url=base_url,
                    origin=origin,
                    clients=count,
                    warmup_s=ns.warmup,
                    duration_s=ns.duration,
                    frames=frames,
                    lifetime=ns.lifetime if ns.churn else None,
                    rss_pid=rss_pid if ns.soak else None,
                    rss_interval_s=ns.rss_interval,
                )
                row = await run_load(session, cfg)
                rows.append(row)
                _emit(format_table([row]).splitlines()[-1] if len(rows) > 1 else format_table([row]))
                if ns.soak and "rss_start_mb" in row:
                    _emit(
                        f"server RSS: start {row['rss_start_mb']} MB, end {row['rss_end_mb']} MB, "
                        f"max {row['rss_max_mb']} MB"
                    )
    finally:
        if server is not None:
            code = await server.stop()
            logger.info("server stopped (exit code %s)", code)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if ns.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    frames = make_frames(max(1, ns.frames))
    logger.info("%d frames of %d bytes on average", len(frames), sum(map(len, frames)) // len(frames))
    if ns.raw:
        row = run_raw(ns, frames)
        _emit(format_table([row]))
        _emit(json.dumps(row))
        return 0
    rows = asyncio.run(_run_server_mode(ns, frames))
    last = dict(rows[-1])
    if ns.sweep:
        last["rows"] = rows
    last["mode"] = "soak" if ns.soak else ("sweep" if ns.sweep else "load")
    _emit(json.dumps(last))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
