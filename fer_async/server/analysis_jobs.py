"""The video analysis jobs behind /api/analyses: one worker thread per job, frames through the shared batcher.

How a job shares the server with live clients is described in `fer_async.server.analysis`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_async.analyze.core import FileAnalysis, FileSummary, InputError, columns, frame_rows, open_source
from fer_async.analyze.outputs import RowWriter
from fer_async.config import Settings
from fer_async.labels import EMOTIONS, FrameResult
from fer_async.metrics import Metrics
from fer_async.pipeline import FramePipeline
from fer_async.server.outcomes import Reason, submit

logger = logging.getLogger(__name__)

JOB_FRAMES_IN_FLIGHT = 2
MAX_RUNNING_JOBS = 2
MAX_KEPT_JOBS = 32  # finished jobs whose results are still downloadable
RESULT_TTL_S = 30 * 60.0
OVERLOAD_BACKOFF_S = 0.05
# While live clients are connected, a job rests this many times as long as its last chunk took.
LIVE_REST = 1.0
CHART_POINTS = 400  # per track: enough for a chart a few hundred pixels wide
CHART_TRACKS = 6
UPLOAD_CHUNK = 256 * 1024
BATCH_RESULT_TIMEOUT_S = 300.0  # a chunk's frames not answered in this long: the server is gone


class JobsBusy(RuntimeError):
    pass


@dataclass(eq=False)
class Job:
    id: str
    name: str
    source: Path
    upload: bool  # `source` is our temporary copy, removed when the job ends
    csv_path: Path
    state: str = "queued"  # queued → running → done | failed | stopped
    frames_total: int = 0
    frames_done: int = 0
    fps: float = 0.0
    error: str | None = None
    warning: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    summary: FileSummary = field(default_factory=lambda: FileSummary(keep_timeline=True))
    stop: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started
        payload: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "video_fps": round(self.fps, 3),
            "elapsed_s": round(elapsed, 2),
            "frames_per_s": round(self.frames_done / elapsed, 2) if elapsed > 0 else None,
            "rows": self.summary.rows,
            "error": self.error,
            "warning": self.warning,
            "url": f"/api/analyses/{self.id}",
            "csv_url": f"/api/analyses/{self.id}/csv" if not self.running and self.csv_path.is_file() else None,
            "tracks": self.summary.to_json(),
        }
        if not self.running:
            duration = self.frames_done / self.fps if self.fps > 0 else 0.0
            payload["timeline"] = timeline_json(self.summary, duration)
        return payload


def timeline_json(summary: FileSummary, duration_s: float) -> dict[str, Any]:
    """The longest tracks' (smoothed) probabilities over time, thinned to CHART_POINTS each."""
    tracks = []
    for track_id, stats in summary.main_tracks(CHART_TRACKS):
        step = max(1, -(-len(stats.times) // CHART_POINTS))
        tracks.append(
            {
                "face": track_id,
                "times": [round(t, 3) for t in stats.times[::step]],
                "scores": {
                    name: [round(p, 3) for p in values[::step]]
                    for name, values in zip(EMOTIONS, stats.scores, strict=True)
                },
            }
        )
    # The charts span the whole file, so a face's time in view reads against the file's length.
    return {"emotions": list(EMOTIONS), "duration_s": round(duration_s, 3), "tracks": tracks}


class AnalysisJobs:
    """The running and recent jobs of one app."""

    def __init__(
        self,
        settings: Settings,
        batcher: FramePipeline,
        metrics: Metrics,
        workdir: Path,
        max_upload_bytes: int,
        live_consumers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.live_consumers = live_consumers
        self.batcher = batcher
        self.metrics = metrics
        self.workdir = workdir
        self.max_upload_bytes = max_upload_bytes
        self.jobs: dict[str, Job] = {}
        self._closed = False
        self._loop = asyncio.get_running_loop()

    @property
    def running(self) -> int:
        return sum(1 for job in self.jobs.values() if job.running)

    def check_capacity(self) -> None:
        if self._closed:
            raise JobsBusy("the server is shutting down")
        if self.running >= MAX_RUNNING_JOBS:
            raise JobsBusy(f"{MAX_RUNNING_JOBS} analyses are already running; try again when one is done")

    def new_upload_path(self, suffix: str) -> Path:
        handle, name = tempfile.mkstemp(dir=self.workdir, prefix="upload-", suffix=suffix)
        os.close(handle)
        return Path(name)

    def start(self, name: str, source: Path, *, upload: bool) -> Job:
        self.check_capacity()
        self._expire()
        job_id = secrets.token_urlsafe(9)  # results may be private: ids are not guessable
        job = Job(job_id, name, source, upload, self.workdir / f"{job_id}.csv")
        self.jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"analysis {job_id}")
        return job

    def _expire(self) -> None:
        now = time.monotonic()
        finished = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished or 0.0)
        for job in finished:
            if now - (job.finished or now) > RESULT_TTL_S or len(self.jobs) > MAX_KEPT_JOBS:
                del self.jobs[job.id]
                _remove_results(job)

    async def aclose(self) -> None:
        """Stop every job, wait for their threads, remove every file. Idempotent."""
        self._closed = True
        for job in self.jobs.values():
            job.stop.set()
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    async def _run(self, job: Job) -> None:
        try:
            state, error, warning = await asyncio.to_thread(self._analyse, job)
        except Exception as exc:
            logger.exception("analysis %s of %s failed", job.id, job.name)
            state, error, warning = "failed", f"analysis failed: {type(exc).__name__}", None
        finally:
            if job.upload:
                await asyncio.to_thread(job.source.unlink, True)
        # Published only now: whoever sees the job ended also finds its upload gone.
        job.error, job.warning, job.finished = error, warning, time.monotonic()
        job.state = state

    def _classifier(self, job: Job) -> Callable[[list[np.ndarray]], list[FrameResult]]:
        def classify(frames: list[np.ndarray]) -> list[FrameResult]:
            """Runs on the job's thread: submits the frames to the shared batcher and waits."""
            started = time.monotonic()
            future = asyncio.run_coroutine_threadsafe(self._submit_all(frames), self._loop)
            results = future.result(timeout=BATCH_RESULT_TIMEOUT_S)
            if self.live_consumers() > 0:  # an int read from this thread: a snapshot is enough
                job.stop.wait(LIVE_REST * (time.monotonic() - started))
            return results

        return classify

    async def _submit_all(self, frames: list[np.ndarray]) -> list[FrameResult]:
        return list(await asyncio.gather(*(self._submit(frame) for frame in frames)))

    async def _submit(self, frame: np.ndarray) -> FrameResult:
        while True:
            outcome = await submit(self.batcher, self.metrics, "analysis", frame)
            if isinstance(outcome, FrameResult):
                return outcome
            if outcome.reason is not Reason.BUSY:
                raise RuntimeError(outcome.message)  # shutdown, or the batch failed: the job fails
            await asyncio.sleep(OVERLOAD_BACKOFF_S)  # a full queue: the live clients come first

    def _analyse(self, job: Job) -> tuple[str, str | None, str | None]:
        """The job's thread: the CLI's FileAnalysis with the batcher as classifier, rows to CSV.

        Returns the job's final (state, error, warning), for `_run` to publish.
        """
        try:
            info = open_source(job.source)
        except InputError as exc:
            return "failed", _without_path(str(exc), job.source), None
        job.frames_total, job.fps, job.state = info.frame_count, info.fps, "running"
        analysis = FileAnalysis(
            info,
            self._classifier(job),
            smoothing_ms=self.settings.smoothing_ms,
            label_margin=self.settings.label_margin,
            frames_per_call=JOB_FRAMES_IN_FLIGHT,
        )
        writer = RowWriter(job.csv_path, columns(analysis.smoothed))
        complete = False
        try:
            for frame in analysis:
                rows = frame_rows(job.name, frame, analysis.smoothed)
                writer.write(rows)
                job.summary.add(frame, len(rows))
                job.frames_done = analysis.frames_read
                if job.stop.is_set():
                    break
            complete = not job.stop.is_set() and not analysis.stopped_early
        finally:
            if analysis.frames_read == 0:
                writer.discard()
            else:
                job.csv_path = writer.finish(complete) or job.csv_path
        if analysis.frames_read == 0:
            return "failed", "the video has no frames", None
        if job.stop.is_set():
            return "stopped", None, None
        if analysis.stopped_early:
            return (
                "done",
                None,
                f"decoding stopped at frame {analysis.frames_read} of the {info.frame_count} the header "
                "announces (truncated or corrupt); the rows up to there are in the CSV",
            )
        return "done", None, None


def _remove_results(job: Job) -> None:
    job.csv_path.unlink(missing_ok=True)


def _without_path(message: str, path: Path) -> str:
    """Error messages name the file; an upload's temporary path means nothing to its sender."""
    return message.replace(f"{path}: ", "")
