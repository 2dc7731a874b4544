"""Run one server process: the event loop, TLS, the early port check, `run_app`, a clean stop.

Ctrl-C and SIGTERM are handled by aiohttp's `run_app`: it stops accepting, runs on_shutdown
(WebSockets closed with 1001, video streams ended), waits for handlers, then the cleanup
contexts close the batcher, the analyzer and the executors. `python -m fer_async` calls
`serve` once; with `--workers N` each worker process calls it (`fer_async.workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fer_async.config import Settings, log_level_number

if TYPE_CHECKING:
    from fer_async.server.worker import WorkerInfo

# The package's logger: "fer_async: stopped" is what operators (and tests) look for.
logger = logging.getLogger("fer_async")

# Backstop for handlers still running after on_shutdown; our own ones end within a few seconds.
SHUTDOWN_TIMEOUT_S = 10.0


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """A uvloop loop when uvloop is installed (faster sockets), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.cert is None or settings.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.cert, settings.key)
    return context


def port_problem(host: str, port: int, *, reuse_port: bool = False) -> str | None:
    """Why `host:port` cannot be listened on now (e.g. the port is in use), else None.

    Checked before the model loads, which takes seconds to minutes: a taken port should fail
    at once, not after the wait. aiohttp binds again later (a port taken in between still
    fails there, with the same message). `reuse_port`: bind as `--workers` do, beside siblings;
    it also succeeds beside another server's reuse_port listeners of the same user, so the
    supervisor checks without it.
    """
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
                if reuse_port:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _banner(*lines: Any, **_: Any) -> None:
    # run_app "prints" its "Running on ..." banner; route it to the log instead of stdout.
    for line in " ".join(str(x) for x in lines).splitlines():
        if line.strip():
            logger.info("%s", line.strip("= "))


async def _ignore_further_signals(app: web.Application) -> None:
    """A second Ctrl-C / SIGTERM during shutdown must not abort the cleanup half-way.

    run_app's own handlers raise GracefulExit on every signal, also while it is already
    shutting down (e.g. `timeout` or a process manager signals the whole group twice); run_app
    removes these replacements itself when the cleanup is done.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, logger.info, "already shutting down (signal %s)", sig.name)


def configure_logging(settings: Settings, tag: str = "") -> None:
    """Log lines to stderr; `tag` names the worker process in multi-worker mode."""
    logging.basicConfig(
        level=log_level_number(settings),
        format=f"%(asctime)s %(levelname)-7s {tag + ' ' if tag else ''}%(name)s: %(message)s",
    )


def serve(
    settings: Settings, *, worker: WorkerInfo | None = None, on_listening: Callable[[], None] | None = None
) -> int:
    """Run one server process until Ctrl-C/SIGTERM; `worker` when it is one of several on the port."""
    # Import after logging is set up; the app factory loads neither the model nor the detector
    # (both load in a thread during startup, which logs the detector that runs).
    from fer_async.server.app import create_app

    loop, loop_name = new_event_loop()
    logger.info("event loop: %s", loop_name)
    try:
        context = ssl_context(settings)
    except (OSError, ssl.SSLError) as exc:
        logger.error("cannot load TLS certificate/key: %s", exc)
        return 2
    reuse_port = worker is not None and worker.count > 1
    problem = port_problem(settings.host, settings.port, reuse_port=reuse_port)
    if problem is not None:
        logger.error("cannot start: %s", problem)
        return 1
    # Not the detector: --detector yunet may fall back to Haar; startup logs the one that loaded.
    logger.info("starting on %s (model %s)", settings.url, settings.model_name)
    if not settings.tls and settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.info("browsers allow the camera only on https or localhost: use --cert/--key for other machines")
    app = create_app(settings, worker=worker)
    app.on_shutdown.insert(0, _ignore_further_signals)

    def banner(*lines: Any, **kwargs: Any) -> None:
        # run_app prints its banner once every site listens: the moment this process serves.
        _banner(*lines, **kwargs)
        if on_listening is not None:
            on_listening()

    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            ssl_context=context,
            print=banner,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            loop=loop,
            reuse_port=reuse_port,
        )
    except (OSError, ValueError) as exc:  # port in use, missing weights, bad detector model
        logger.error("cannot start: %s", exc)
        return 1
    logger.info("stopped")
    return 0
