"""The application factory: resources as cleanup contexts, routes, templates, shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp_jinja2
import jinja2
from aiohttp import WSCloseCode, web
from aiohttp.http_exceptions import HttpProcessingError

from fer_async.batcher import Batcher, BatchStats
from fer_async.config import Settings
from fer_async.labels import FrameResult
from fer_async.loading import load_detector, load_model, new_analyzer
from fer_async.metrics import Metrics
from fer_async.paths import STATIC_DIR, TEMPLATES_DIR
from fer_async.pipeline import FramePipeline, PreparedBatcher
from fer_async.predictor import ExecutorUnavailable, Predictor
from fer_async.recognition import Prepared
from fer_async.remote import RemotePredictor
from fer_async.server import job_routes, mjpeg, views, ws
from fer_async.server.connection import Connections
from fer_async.server.keys import (
    ANALYZER,
    DETECTOR_NAME,
    METRICS,
    MODEL,
    MODEL_EXECUTOR,
    PHOTO_UPLOADS,
    PIPELINE,
    SETTINGS,
    VIDEO_HUB,
    WEBSOCKETS,
)
from fer_async.server.uploads import expect_unless
from fer_async.server.video_hub import VideoHub
from fer_async.server.worker import WORKER, WorkerInfo, worker_ctx
from fer_async.tracker import tracker_for

logger = logging.getLogger(__name__)

# Drawing boxes and encoding JPEGs for the MJPEG streams, off the loop and off the model thread.
VIDEO_THREADS = 1
# Upper bound on closing all sockets at shutdown (each close is also bounded by connection.CLOSE_TIMEOUT_S).
SHUTDOWN_CLOSE_TIMEOUT_S = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _model_executor_ctx(app: web.Application) -> AsyncIterator[None]:
    # ONE thread: the model is not re-entrant, and one call for many faces is what batching buys.
    executor = ThreadPoolExecutor(1, thread_name_prefix="fer-model")
    app[MODEL_EXECUTOR] = executor
    yield
    await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


async def _model_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if MODEL not in app and settings.executor is not None:
        remote = RemotePredictor(
            settings.executor, settings.model_name, flip_tta=settings.flip_tta, timeout_s=settings.executor_timeout_s
        )
        await remote.start()
        app[MODEL] = remote
        app[METRICS].watch_executor(lambda: remote.problem is None)
        yield
        await remote.aclose()
        return
    if MODEL not in app:  # not injected by a test
        loop = asyncio.get_running_loop()
        # FacialExpressionModel warms up (traces, allocates) in its constructor: all in the thread.
        app[MODEL] = await loop.run_in_executor(app[MODEL_EXECUTOR], load_model, settings)
    yield


async def _analyzer_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
    # Blocking (file reads, at most one bounded download of YuNet's file): off the loop.
    detector, app[DETECTOR_NAME] = await loop.run_in_executor(app[MODEL_EXECUTOR], load_detector, settings)
    logger.info("face detector: %s", app[DETECTOR_NAME])
    analyzer = new_analyzer(settings, app[MODEL], detector)
    app[ANALYZER] = analyzer
    yield
    await asyncio.to_thread(analyzer.close)


async def _batcher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    analyzer = app[ANALYZER]
    executor = app[MODEL_EXECUTOR]
    metrics = app[METRICS]
    loop = asyncio.get_running_loop()

    async def classify(prepared: list[Prepared]) -> list[FrameResult | Exception]:
        try:
            results: list[FrameResult | Exception] = list(
                await loop.run_in_executor(executor, analyzer.classify, prepared)
            )
        except ExecutorUnavailable as exc:
            # An outage fails every batch until the server is back. The executor logs its state
            # changes once; per-frame errors keep the batcher from logging every batch too.
            logger.debug("batch of %d frames failed: %s", len(prepared), exc)
            return [exc] * len(prepared)
        except Exception:
            # Logged once here, with the traceback; each client only hears "analysis failed".
            logger.exception("analysis of a batch of %d frames failed", len(prepared))
            raise
        analysed = [r for r in results if isinstance(r, FrameResult)]
        metrics.observe_analysis([r.timings for r in analysed])
        metrics.observe_searches(r.search for r in analysed)
        return results

    def on_batch(stats: BatchStats) -> None:
        metrics.observe_batch(stats.size, stats.queue_wait_s, stats.run_s)

    batcher: PreparedBatcher = Batcher(
        classify,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_s,
        max_queue=settings.max_queue,
        on_batch=on_batch,
    )
    await batcher.start()
    app[PIPELINE] = FramePipeline(analyzer, batcher, settings.max_queue)
    yield
    await batcher.aclose()


async def _video_hub_ctx(app: web.Application) -> AsyncIterator[None]:
    executor = ThreadPoolExecutor(VIDEO_THREADS, thread_name_prefix="fer-video")
    settings = app[SETTINGS]
    trackers = functools.partial(tracker_for, settings)  # one per video channel
    hub = VideoHub(app[PIPELINE], app[METRICS], executor, tracker_factory=trackers, cadence=settings.cadence)
    app[VIDEO_HUB] = hub
    yield
    await hub.aclose()
    await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


async def _on_shutdown(app: web.Application) -> None:
    """Say goodbye (1001) to every WebSocket and end every video stream.

    Runs before aiohttp waits for handlers to finish: open sockets and endless MJPEG
    responses would otherwise hold shutdown for the whole shutdown timeout.
    """
    connections = app[WEBSOCKETS]
    if connections:
        logger.info("closing %d WebSocket clients", len(connections))
    try:
        async with asyncio.timeout(SHUTDOWN_CLOSE_TIMEOUT_S):
            await connections.close_all(WSCloseCode.GOING_AWAY, "server shutdown")
    except TimeoutError:
        logger.warning("some WebSocket clients did not close in %.0f s", SHUTDOWN_CLOSE_TIMEOUT_S)
    if VIDEO_HUB in app:
        await app[VIDEO_HUB].aclose()


class _ClientProtocolErrors(logging.Filter):
    """A request aiohttp cannot parse (a bad chunk size, a header without a colon, Content-Length
    with chunked) is the client's mistake, answered 400 before any handler runs; aiohttp logged
    each at ERROR with a traceback, so any client could fill the log with them. One INFO line,
    as a cut-off upload gets."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= exc.code < 500:
            return True
        # The logger's level was checked against ERROR: an INFO line must pass it again.
        if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
            return False
        reason = " ".join(str(exc.message).split())[:200]  # aiohttp's message spans lines
        record.msg, record.args = f"{record.getMessage()}: {exc.code} {reason}", ()
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info, record.exc_text = None, None
        return True


_CLIENT_PROTOCOL_ERRORS = _ClientProtocolErrors()


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unexpected exceptions become a bare JSON 500: the traceback goes to the log only."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ConnectionError as exc:  # the client went away mid-request (a reset during a WebSocket handshake)
        logger.info("%s %s: the client went away: %s", request.method, request.path, exc)
        return web.json_response({"error": "the connection was lost"}, status=400)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")


def create_app(
    settings: Settings, *, model: Predictor | None = None, worker: WorkerInfo | None = None
) -> web.Application:
    """The aiohttp application for `settings`; `model` replaces loading weights (tests).

    `worker`: which of several `--workers` processes serves this app (labels /healthz, /metrics).
    """
    worker = worker or WorkerInfo.single()
    several = worker.count > 1
    logging.getLogger("aiohttp.server").addFilter(_CLIENT_PROTOCOL_ERRORS)  # once: the same filter is not added twice
    app = web.Application(
        middlewares=[_errors_middleware],
        client_max_size=settings.max_frame_bytes + views.MULTIPART_OVERHEAD,
    )
    app[SETTINGS] = settings
    app[WORKER] = worker
    app[METRICS] = Metrics(worker=worker.label, shared_dir=worker.shared_dir) if several else Metrics()
    app[WEBSOCKETS] = Connections()
    app[PHOTO_UPLOADS] = asyncio.Semaphore(views.PHOTO_UPLOADS_AT_ONCE)
    if model is not None:
        app[MODEL] = model

    templates = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    templates.globals.update(views.template_globals(settings))

    # Order matters: each context may use the ones before it, and they close in reverse.
    app.cleanup_ctx.extend([_model_executor_ctx, _model_ctx, _analyzer_ctx, _batcher_ctx, _video_hub_ctx])
    if several:
        app.cleanup_ctx.append(worker_ctx)
    job_routes.setup(app, settings.max_video_bytes)  # video analysis jobs (after the batcher's context, which they use)
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(_security_headers)

    app.router.add_get("/", views.index, name="index")
    app.router.add_get("/ws", ws.websocket_handler, name="ws")
    app.router.add_get("/videos", views.videos, name="videos")
    app.router.add_get("/video/{name}", mjpeg.video_stream, name="video")
    app.router.add_post(
        "/api/predict", views.predict, name="predict", expect_handler=expect_unless(views.predict_refusal)
    )
    app.router.add_get("/healthz", views.healthz, name="healthz")
    app.router.add_get("/metrics", views.metrics, name="metrics")
    app.router.add_static("/static", STATIC_DIR, name="static")
    return app
