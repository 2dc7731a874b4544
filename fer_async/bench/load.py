"""The load generator: simulated browser tabs over real WebSockets, and what they measured.

Each client keeps exactly ONE frame in flight: it sends a JPEG, waits for the reply to that
frame (`result`, `error` or `dropped`), then sends the next. So the server's throughput is
measured closed-loop, and the latency is what one browser tab would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from fer_async.bench.harness import rss_kb
from fer_async.bench.report import (
    detection_figures,
    emit,
    parse_histogram,
    percentile,
    round_or_none,
    same_processes,
    search_counts,
    stage_profile,
)

logger = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 30.0  # a reply slower than this is counted as a timeout, and the client moves on
CONNECT_TIMEOUT_S = 30.0
DEFAULT_RSS_INTERVAL_S = 60.0
RESULT_KINDS = ("result", "error", "dropped")


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


async def fetch_metrics(session: aiohttp.ClientSession, base_url: str) -> str | None:
    """The server's /metrics page, None when unavailable."""
    try:
        async with session.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                return None
            return await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


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


async def wait_for_hello(session: aiohttp.ClientSession, url: str, origin: str | None) -> dict[str, Any]:
    """Connect once, return the server's hello message (also proves /ws answers)."""
    async with session.ws_connect(url, origin=origin, compress=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)) as ws:
        msg = await ws.receive(timeout=CONNECT_TIMEOUT_S)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"expected a hello text message, got {msg.type!r} {msg.data!r}")
        hello = json.loads(msg.data)
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            raise RuntimeError(f"expected a hello message, got {hello!r}")
        return hello


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
        "p50_ms": round_or_none(percentile(latencies, 50)),
        "p95_ms": round_or_none(percentile(latencies, 95)),
        "p99_ms": round_or_none(percentile(latencies, 99)),
        "mean_ms": round_or_none(float(np.mean(latencies)) if latencies else None),
        "mean_batch": round_or_none(mean_batch, 2),
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
            emit(f"server RSS at {elapsed:5.0f} s: {value / 1024:.1f} MB")
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
        metrics_start = await fetch_metrics(session, cfg.base_url)
        window_start = loop.time()
        if cfg.rss_pid is not None:
            rss_task = asyncio.create_task(
                _sample_rss(cfg.rss_pid, cfg.rss_interval_s, rss_stop, rss_samples, window_start)
            )
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        window_end = loop.time()
        metrics_end = await fetch_metrics(session, cfg.base_url)
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
            emit(f"server RSS at end: {end_value / 1024:.1f} MB")

    mean_batch = profile = searches = None
    if metrics_start is not None and metrics_end is not None and not same_processes(metrics_start, metrics_end):
        emit(
            "the two /metrics scrapes reached different server processes (replicas behind a proxy?): "
            "no batch sizes, profile or detection figures"
        )
        metrics_start = metrics_end = None
    if metrics_start is not None and metrics_end is not None:
        hist_start, hist_end = parse_histogram(metrics_start), parse_histogram(metrics_end)
        if hist_start is not None and hist_end is not None and hist_end[1] > hist_start[1]:
            mean_batch = (hist_end[0] - hist_start[0]) / (hist_end[1] - hist_start[1])
        profile = stage_profile(metrics_start, metrics_end, window_end - window_start)
        searches = search_counts(metrics_start, metrics_end)
    row = summarize(stats, (window_start, window_end), cfg.clients, mean_batch)
    if profile is not None:
        row["profile"] = profile
    if searches is not None:
        row |= detection_figures(searches)
    if stats.error_samples:
        row["error_samples"] = stats.error_samples
    if cfg.rss_pid is not None and rss_samples:
        values = [kb for _, kb in rss_samples]
        row["rss_start_mb"] = round(values[0] / 1024, 1)
        row["rss_end_mb"] = round(values[-1] / 1024, 1)
        row["rss_max_mb"] = round(max(values) / 1024, 1)
        row["rss_samples_mb"] = [[round(t, 1), round(kb / 1024, 1)] for t, kb in rss_samples]
    return row
