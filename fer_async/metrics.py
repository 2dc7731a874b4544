"""Prometheus metrics of one app, in a registry of its own.

A per-app `CollectorRegistry` (not prometheus_client's global one) lets tests build many apps
in one process without "duplicated timeseries" errors, and keeps /metrics to this app's numbers.
All names carry the `fer_` prefix, e.g. `fer_frames_total`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The classic text format: every Prometheus version and most scrapers understand it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Where frames come from: the webcam socket, the MJPEG video streams, or the HTTP upload endpoint.
SOURCES = ("ws", "video", "api")

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
        # Pre-create the label sets so /metrics shows zeros before the first frame arrives.
        for source in SOURCES:
            self.frames.labels(source)
            self.faces.labels(source)
            self.frames_dropped.labels(source)

    def observe_batch(self, size: int, queue_wait_s: float, run_s: float) -> None:
        self.batch_size.observe(size)
        self.queue_wait.observe(queue_wait_s)
        self.model_seconds.observe(run_s)

    def frame_done(self, source: str, faces: int) -> None:
        self.frames.labels(source).inc()
        if faces:
            self.faces.labels(source).inc(faces)

    def render(self) -> bytes:
        return generate_latest(self.registry)
