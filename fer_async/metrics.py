"""Prometheus metrics of one app, in a registry of its own.

A per-app `CollectorRegistry` (not prometheus_client's global one) lets tests build many apps
in one process without "duplicated timeseries" errors, and keeps /metrics to this app's numbers.
All names carry the `fer_` prefix, e.g. `fer_frames_total`.

Under `--workers N` every process has its own `Metrics`. A scrape reaches whichever worker the
kernel picks, so each worker also publishes its samples (as JSON, every second) to a directory
the workers share and `render()` answers with all of them, each series labelled `worker="i"`:
one scrape sees the whole server, `sum without (worker)` gives its totals.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from fer_async.schedule import Search

logger = logging.getLogger(__name__)

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

    def __init__(self, *, worker: str | None = None, shared_dir: Path | None = None) -> None:
        """`worker` labels every series (multi-worker mode); `shared_dir` is where the workers publish them."""
        self.worker = worker
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Which process answered: how a scraper (the bench) tells that two scrapes through a
        # proxy reached different replicas. A random id, as pids and start times repeat across hosts.
        self.instance = Gauge(
            "fer_instance", "1 for each server process, labelled with its random id", ["id"], registry=r
        )
        self.instance.labels(uuid.uuid4().hex).set(1)
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
        self.detections = Counter(
            "fer_detections",
            "Analysed frames by the face search they got: full (the whole frame), regions (only around the "
            "stream's last faces, all found there), regions_lost (one was not: the whole frame too)",
            ["search"],
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
        for search in Search:
            self.detections.labels(search.value)
        # Pre-create the label sets so /metrics shows zeros before the first frame arrives.
        for source in SOURCES:
            self.frames.labels(source)
            self.faces.labels(source)
            self.frames_dropped.labels(source)

    def watch_executor(self, is_up: Callable[[], bool]) -> None:
        """Publish `fer_executor_up` (1 up, 0 down), read from `is_up` at each scrape.

        Only a server with `--executor` has the gauge: without one there is nothing to be down.
        """
        up = Gauge(
            "fer_executor_up",
            "1 while the --executor inference server serves the model, else 0",
            registry=self.registry,
        )
        up.set_function(lambda: float(is_up()))

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

    def observe_searches(self, searches: Iterable[str]) -> None:
        """Which face search each frame of a batch got (`FrameResult.search`)."""
        for search in searches:
            self.detections.labels(search).inc()

    def frame_done(self, source: str, faces: int) -> None:
        self.frames.labels(source).inc()
        if faces:
            self.faces.labels(source).inc(faces)

    def own_families(self) -> list[Metric]:
        """This process's samples, labelled with its worker. Call on the event loop's thread
        (the loop CPU gauge reads the calling thread's CPU time)."""
        families = list(self.registry.collect())
        if self.worker is None:
            return families
        for family in families:
            family.samples = [s._replace(labels={**s.labels, "worker": self.worker}) for s in family.samples]
        return families

    def _published_path(self) -> Path | None:
        if self.shared_dir is None or self.worker is None:
            return None
        return self.shared_dir / f"worker-{self.worker}.json"

    def publish(self, own: list[Metric]) -> None:
        """Write `own` (from `own_families`) where the sibling workers' `render()` reads it (atomically)."""
        path = self._published_path()
        if path is None:
            return
        families = [
            {
                "name": f.name,
                "documentation": f.documentation,
                "type": f.type,
                "unit": f.unit,
                "samples": [[s.name, s.labels, s.value] for s in f.samples],
            }
            for f in own
        ]
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(families))
        os.replace(partial, path)

    def _sibling_families(self) -> Iterator[Metric]:
        own = self._published_path()
        if own is None or self.shared_dir is None:
            return
        for path in sorted(self.shared_dir.glob("worker-*.json")):
            if path == own:
                continue
            try:
                families: list[dict[str, Any]] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # a sibling that is (re)starting: skip it this time
                logger.debug("cannot read %s: %s", path, exc)
                continue
            for f in families:
                family = Metric(f["name"], f["documentation"], f["type"], f["unit"])
                family.samples = [Sample(name, labels, value) for name, labels, value in f["samples"]]
                yield family

    def render(self, own: list[Metric] | None = None) -> bytes:
        """The /metrics body: `own` (default: collected now, on this thread), plus the sibling
        workers' last published samples. Reads files in multi-worker mode: the server collects
        `own` on the loop and renders in a worker thread.
        """
        merged: dict[str, Metric] = {}
        for family in (*(self.own_families() if own is None else own), *self._sibling_families()):
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family
        return generate_latest(_Families(merged.values()))


class _Families:
    """The one method of a registry that `generate_latest` uses, over families already collected."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
