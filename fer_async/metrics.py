"""Prometheus metrics of one app, in a registry of its own.

A per-app `CollectorRegistry` (not prometheus_client's global one) lets tests build many apps
in one process without "duplicated timeseries" errors, and keeps /metrics to this app's numbers.
All names carry the `fer_` prefix, e.g. `fer_frames_total`.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The classic text format: every Prometheus version and most scrapers understand it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Where frames come from: the webcam socket, the MJPEG video streams, or the HTTP upload endpoint.
SOURCES = ("ws", "video", "api")

# Where the server's time per frame goes (`fer_stage_seconds_total`; divide by frames for a
# per-frame profile, as `python -m fer_async.bench` does). decode, detect and crop run per frame
# on the analyzer's pool; model is the shared call, counted once per batch; receive (the
# WebSocket reader's checks and hand-off), json (result to text) and send (awaiting the socket
# write) run on the event loop, for WebSocket frames.
STAGES = ("receive", "decode", "detect", "crop", "model", "json", "send")
ANALYZER_STAGES = ("decode", "detect", "crop")

# Batches are capped by --max-batch (16 by default); powers of two show how full they run.
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# Queue waits are bounded by --max-wait-ms plus one batch in front; model runs by batch size.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The counters, histograms and gauges the server updates; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames = Counter("fer_frames", "Frames analysed", ["source"], registry=r)
        self.faces = Counter("fer_faces", "Faces found in analysed frames", ["source"], registry=r)
        self.frames_dropped = Counter(
            "fer_frames_dropped",
            "Frames replaced by a newer one before analysis (ws; video: analysis slower than the file's fps) "
            "or not delivered to a lagging viewer (video)",
            ["source"],
            registry=r,
        )
        self.frame_errors = Counter(
            "fer_frame_errors",
            "Frames answered with an error, by reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "fer_batch_size", "Frames per analysed batch", buckets=_BATCH_SIZE_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "fer_queue_wait_seconds",
            "Time a batch's first frame waited in the batcher queue",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "fer_model_seconds",
            "Analysis time per batch (decode + detect + model), in the model thread",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.connected_clients = Gauge("fer_connected_clients", "Open WebSocket clients", registry=r)
        self.video_viewers = Gauge("fer_video_viewers", "Open MJPEG viewers", registry=r)
        self.stage_seconds = Counter(
            "fer_stage_seconds", "Server seconds spent per stage of frame handling (see STAGES)", ["stage"], registry=r
        )
        # Read when /metrics is rendered, which happens on the event loop's thread: the CPU that
        # thread has used, so a scraper can tell how busy (and how idle) the loop was in a window.
        self.loop_cpu = Gauge(
            "fer_event_loop_cpu_seconds", "CPU seconds used by the event loop thread (read at scrape)", registry=r
        )
        self.loop_cpu.set_function(time.thread_time)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        # Pre-create the label sets so /metrics shows zeros before the first frame arrives.
        for source in SOURCES:
            self.frames.labels(source)
            self.faces.labels(source)
            self.frames_dropped.labels(source)

    def observe_batch(self, size: int, queue_wait_s: float, run_s: float) -> None:
        self.batch_size.observe(size)
        self.queue_wait.observe(queue_wait_s)
        self.model_seconds.observe(run_s)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).inc(seconds)

    def observe_analysis(self, timings_ms: list[dict[str, float]]) -> None:
        """The analyzer's per-frame stage timings (ms) of one batch; the shared model call once."""
        for timings in timings_ms:
            for stage in ANALYZER_STAGES:
                self.stage_seconds.labels(stage).inc(timings.get(stage, 0.0) / 1000.0)
        self.stage_seconds.labels("model").inc(max((t.get("model", 0.0) for t in timings_ms), default=0.0) / 1000.0)

    def frame_done(self, source: str, faces: int) -> None:
        self.frames.labels(source).inc()
        if faces:
            self.faces.labels(source).inc(faces)

    def render(self) -> bytes:
        return generate_latest(self.registry)
