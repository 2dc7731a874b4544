"""`python -m fer_async.bench`: load generator for `/ws`, plus the compute bound it is compared against.

    python -m fer_async.bench --clients 16 --duration 30
    python -m fer_async.bench --sweep 1,4,16,64 --duration 20 --max-batch 16 --max-wait-ms 5
    python -m fer_async.bench --raw --max-batch 16 --duration 20
    python -m fer_async.bench --url ws://127.0.0.1:8080/ws --clients 8 --duration 30
    python -m fer_async.bench --soak --churn --clients 16 --duration 600

Each client keeps exactly ONE real face frame in flight: it sends a 640x480 JPEG (the
astronaut photo of `skimage.data`, moving 6 px a frame around an ellipse of `--frames`
frames, each client starting at a different one), waits for the reply to that frame
(`result`, `error` or `dropped`), then sends the next. So the server's throughput is measured
closed-loop, and the latency is what one browser tab would see. The face moves as a webcam's
does, so the server's `--detect-every` schedule works as it does for a person: a full face
detection every N frames of a client, YuNet around the last face between.

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
After each row a `detection, N clients: full face detection on X% of F frames ...` line says
how often the server searched whole frames (`fer_detections_total{search}` over the measured
window; `full_detection_pct` and `searches` in the JSON), and a
`profile, N clients, server ms per frame: ...` line splits the server's time
per WebSocket frame into stages (receive, decode, detect, crop, model, json, send; the model's
batch call shared among its frames) and gives the event loop's idle share, from the deltas of
`fer_stage_seconds_total`, `fer_frames_total{source="ws"}` and `fer_event_loop_cpu_seconds`
over the measured window (also under `"profile"` in the JSON). "Idle" is 100% minus the loop
thread's CPU time over wall time, so time spent waiting for the GIL counts as idle.

`--raw` skips the server: the same frames go straight through `Analyzer.analyze` in batches
of `--max-batch` (real model, real detector, this process), which is the fps the server
could at best reach on this machine. Each batch holds the next frame of `--max-batch`
streams, each with its own detection schedule, as the server's clients are.

`--soak` runs for `--duration` seconds (bounded), samples the server's RSS at the start,
every `--rss-interval` seconds and at the end; with `--churn` clients come and go
continuously (random lifetimes of `--lifetime` seconds, some closing with a frame in flight).
Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from fer_async.bench.harness import InProcessServer, ServerProcess, check_loopback, rss_kb
from fer_async.bench.load import DEFAULT_RSS_INTERVAL_S, RunConfig, run_load, wait_for_hello
from fer_async.bench.raw import run_raw
from fer_async.bench.report import emit, format_detection, format_profile, format_table
from fer_async.config import MODEL_OPTIONS, Settings, add_model_options, command_line, resolve_options
from fer_async.schedule import SCHEDULE_OPTIONS
from fer_async.synthetic import moving_frames

logger = logging.getLogger("fer_async.bench")  # not "__main__" under python -m

DEFAULT_FRAMES = 32  # one loop of the moving face: 32 positions 6 px apart
DEFAULT_WARMUP_S = 3.0
DEFAULT_LIFETIME_S = (1.0, 6.0)  # --churn: each connection lives uniform(lo, hi) seconds
MAX_CLIENTS = 1024  # a sanity bound on --clients / --sweep entries
MAX_DURATION_S = 24 * 3600.0  # everything stops by itself
# The server's options the bench takes, passed on to the server it starts (--raw: its own batches).
SERVER_OPTIONS = ("max_batch", "max_wait_ms", *SCHEDULE_OPTIONS, *MODEL_OPTIONS)


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
    server = p.add_argument_group("server options (passed to the started server; --max-batch: --raw's batch size)")
    add_model_options(server, SERVER_OPTIONS)
    p.add_argument(
        "--server-arg", action="append", default=[], help="extra argument for the started server (repeatable)"
    )
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="JPEGs in the face's loop (default %(default)s)")
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
    ns.settings = resolve_options(p, ns, SERVER_OPTIONS)  # command line > FER_* > default, as the server
    if ns.warmup < 0:
        p.error("--warmup must be >= 0")
    if not 1 <= ns.max_batch <= 4096:
        p.error("--max-batch must be 1..4096")
    if ns.url:
        check_loopback(ns.url)
    if ns.raw and (ns.url or ns.sweep or ns.soak):
        p.error("--raw does not combine with --url, --sweep or --soak")
    return ns


def _server_args(ns: argparse.Namespace, *, clients: int = 0) -> list[str]:
    # Room for every bench client plus the /metrics probe and a spare.
    clients_flag = ["--max-clients", str(max(64, clients + 8))]
    return [*command_line(ns.settings, SERVER_OPTIONS), *clients_flag, *ns.server_arg]


async def _served_by(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """What runs the server's network and detector, from its /healthz (empty when it has none)."""
    try:
        async with session.get(f"{base_url}/healthz") as response:
            health = await response.json()
    except (aiohttp.ClientError, ValueError) as exc:
        logger.info("no /healthz from %s: %s", base_url, exc)
        return {}
    return {key: health.get(key) for key in ("device", "providers", "model_file", "detector")}


async def _run_server_mode(ns: argparse.Namespace, frames: Sequence[bytes]) -> list[dict[str, Any]]:
    counts: list[int] = ns.sweep or [ns.clients]
    server: ServerProcess | InProcessServer | None = None
    url = ns.url
    rss_pid = ns.server_pid
    if url is None:
        server_args = _server_args(ns, clients=max(counts))
        server = InProcessServer(Settings.from_args(server_args)) if ns.in_process else ServerProcess(server_args)
        await server.start()
        url = server.base_url.replace("http://", "ws://") + "/ws"
        rss_pid = server.pid
        if isinstance(server, ServerProcess) and server.ready_s is not None:
            emit(f"server: launch -> /healthz {server.ready_s:.2f} s")
    parts = urlsplit(url)
    base_url = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    origin = ns.origin or base_url
    rows: list[dict[str, Any]] = []
    try:
        connector = aiohttp.TCPConnector(limit=0)  # WebSockets hold their connection: no pool cap
        async with aiohttp.ClientSession(connector=connector) as session:
            hello = await wait_for_hello(session, url, origin)
            logger.info("server hello: %s", json.dumps(hello)[:300])
            served_by = await _served_by(session, base_url)
            if served_by:
                emit("server: " + ", ".join(f"{key} {value}" for key, value in served_by.items()))
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
                if served_by:
                    row["server"] = served_by
                rows.append(row)
                emit(format_table([row]).splitlines()[-1] if len(rows) > 1 else format_table([row]))
                if "profile" in row:
                    emit(format_profile(count, row["profile"]))
                if "searches" in row:
                    emit(format_detection(f"{count} clients", row))
                rss = rss_kb(rss_pid) if rss_pid is not None and server is not None else None
                if rss is not None and not ns.soak:
                    row["server_rss_mb"] = round(rss / 1024, 1)
                    emit(f"server RSS after {count} clients: {row['server_rss_mb']} MB")
                if ns.soak and "rss_start_mb" in row:
                    emit(
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
    frames = moving_frames(max(1, ns.frames))
    logger.info("%d frames of %d bytes on average", len(frames), sum(map(len, frames)) // len(frames))
    if ns.raw:
        row = run_raw(ns, frames)
        emit(format_table([row]))
        emit(format_detection(f"raw, {row['streams']} streams", row))
        emit(json.dumps(row))
        return 0
    rows = asyncio.run(_run_server_mode(ns, frames))
    last = dict(rows[-1])
    if ns.sweep:
        last["rows"] = rows
    last["mode"] = "soak" if ns.soak else ("sweep" if ns.sweep else "load")
    emit(json.dumps(last))
    return 0
