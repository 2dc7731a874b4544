"""The video analysis jobs this process runs: one thread per job, frames through the shared batcher.

How a job shares the server with live clients is described in `fer_async.server.job_routes`.
A job's state and rows live in the results directory (`fer_async.server.results_dir`), so any
process answers for any job; only the running itself (its thread, its stop flag) is this
process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fer_async.analyze.core import (
    AnalysedFrame,
    Ending,
    FileAnalysis,
    FileSummary,
    InputError,
    columns,
    frame_rows,
    open_source,
)
from fer_async.analyze.outputs import RowWriter, WriteError, incomplete_path
from fer_async.analyze.stages import Stages
from fer_async.config import Settings
from fer_async.labels import EMOTIONS, FrameResult
from fer_async.metrics import Metrics
from fer_async.pipeline import FramePipeline
from fer_async.recognition import Prepared
from fer_async.schedule import FramePlan
from fer_async.server.outcomes import Reason, Refused, attempt
from fer_async.server.results_dir import HEARTBEAT_S, RUNNING_STATES, ResultsDir, ended_at, new_job_id
from fer_async.tracker import tracker_for

logger = logging.getLogger(__name__)
T = TypeVar("T")

JOB_FRAMES_IN_FLIGHT = 2
MAX_RUNNING_JOBS = 2  # per server process: each has its own model and batcher
OVERLOAD_BACKOFF_S = 0.05
# A job waits this long for an unreachable --executor server to come back before it fails.
EXECUTOR_OUTAGE_LIMIT_S = 60.0
# While live clients are connected, a job rests this many times as long as its last chunk took.
LIVE_REST = 1.0
CHART_POINTS = 400  # per track: enough for a chart a few hundred pixels wide
CHART_TRACKS = 6
UPLOAD_CHUNK = 256 * 1024
BATCH_RESULT_TIMEOUT_S = 300.0  # a chunk's frames not answered in this long: the server is gone
PROGRESS_EVERY_S = 0.25  # how often a running job's state is rewritten as frames go by
SWEEP_EVERY_S = 60.0  # expired results go even when no new job starts
READ_LIMIT = "an analysis on this server reads (--max-video-frames)"
# A stopped job's warning when no user asked for the stop: otherwise the two read the same.
SHUTDOWN_WARNING = "the server shut down during the analysis"

# What a job's state says for each ending of its FileAnalysis.
JOB_STATES = {Ending.DONE: "done", Ending.CUT_SHORT: "done", Ending.STOPPED: "stopped", Ending.NO_FRAMES: "failed"}


class JobsBusy(RuntimeError):
    pass


@dataclass(eq=False)
class Job:
    """A job this process runs; `state()` is what it publishes to the results directory."""

    id: str
    name: str
    source: Path
    upload: bool  # `source` is our temporary copy, removed when the job ends
    state: str = "queued"  # queued → running → done | failed | stopped
    frames_total: int = 0
    frames_done: int = 0
    fps: float = 0.0
    error: str | None = None
    warning: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    rows_file: str | None = None
    summary: FileSummary = field(default_factory=lambda: FileSummary(keep_timeline=True))
    stop: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    # Held while the job's thread adds a frame and while a snapshot is published, so states
    # are written in order and progress never goes back.
    lock: threading.Lock = field(default_factory=threading.Lock)
    published: float = 0.0  # time.monotonic() of the last write of its state
    stop_reason: str | None = None  # the warning of a stop that no user asked for
    lost: bool = False  # another process gave it up for lost (ResultsDir.read_state): it writes nothing more

    def snapshot(self) -> dict[str, Any]:
        ended = self.state not in RUNNING_STATES
        duration = self.frames_done / self.fps if self.fps > 0 else 0.0
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "video_fps": round(self.fps, 3),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rows": self.summary.rows,
            "error": self.error,
            "warning": self.warning,
            "rows_file": self.rows_file,
            "tracks": self.summary.to_json(),
            "timeline": timeline_json(self.summary, duration) if ended else None,
        }


def public_json(state: dict[str, Any], has_rows: bool) -> dict[str, Any]:
    """What GET /api/analyses/{id} answers for a state read from the results directory."""
    ended = ended_at(state)
    elapsed = (ended or time.time()) - float(state["started_at"])
    payload = {
        key: state.get(key)
        for key in ("id", "name", "state", "frames_done", "frames_total", "video_fps", "rows", "error", "warning")
    }
    payload |= {
        "elapsed_s": round(elapsed, 2),
        "frames_per_s": round(state["frames_done"] / elapsed, 2) if elapsed > 0 else None,
        "url": f"/api/analyses/{state['id']}",
        "csv_url": f"/api/analyses/{state['id']}/csv" if has_rows else None,
        "tracks": state.get("tracks", []),
    }
    if ended is not None:
        payload["timeline"] = state.get("timeline") or timeline_json(FileSummary(), 0.0)
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
    """The jobs this process runs, and every process's jobs read from the results directory."""

    def __init__(
        self,
        settings: Settings,
        batcher: FramePipeline,
        metrics: Metrics,
        results: ResultsDir,
        uploads_dir: Path,
        max_upload_bytes: int,
        live_consumers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.live_consumers = live_consumers
        self.batcher = batcher
        self.metrics = metrics
        self.results = results
        self.uploads_dir = uploads_dir  # this process's own: uploads never go to a shared volume
        self.max_upload_bytes = max_upload_bytes
        self.running: dict[str, Job] = {}
        self._closed = False
        self._receiving = 0
        self._loop = asyncio.get_running_loop()

    def check_capacity(self) -> None:
        if self._closed:
            raise JobsBusy("the server is shutting down")
        # An upload on its way holds its job's place: N uploads at once would put N x
        # --max-video-bytes on disk, most of them refused once they arrived.
        if len(self.running) + self._receiving >= MAX_RUNNING_JOBS:
            raise JobsBusy(f"{MAX_RUNNING_JOBS} analyses are already running or uploading; try again when one is done")

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """Hold a job's place while its upload arrives (checked first: JobsBusy when none is free)."""
        self.check_capacity()
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1

    def new_upload_path(self, suffix: str) -> Path:
        self.uploads_dir.mkdir(parents=True, exist_ok=True)  # removed under us (a /tmp cleaner): made again
        handle, name = tempfile.mkstemp(dir=self.uploads_dir, prefix="upload-", suffix=suffix)
        os.close(handle)
        return Path(name)

    async def start(self, name: str, source: Path, *, upload: bool) -> dict[str, Any]:
        """Start a job on `source`; its first state, as GET would answer it."""
        self.check_capacity()
        job = Job(new_job_id(), name, source, upload)
        self.running[job.id] = job  # counted before the first await: capacity holds
        try:
            await asyncio.to_thread(self.results.sweep)
            await asyncio.to_thread(self._publish, job)
        except BaseException:
            del self.running[job.id]
            raise
        job.task = asyncio.create_task(self._run(job), name=f"analysis {job.id}")
        return public_json(job.snapshot(), has_rows=False)

    async def status(self, job_id: str) -> dict[str, Any] | None:
        state = await asyncio.to_thread(self.results.read_state, job_id)
        if state is None:
            return None
        has_rows = await asyncio.to_thread(self.results.rows_path, state) is not None
        return public_json(state, has_rows)

    async def rows(self, job_id: str) -> tuple[dict[str, Any], Path | None] | None:
        """The job's state and its rows file (None while it runs or when it has none); None if unknown."""
        state = await asyncio.to_thread(self.results.read_state, job_id)
        if state is None:
            return None
        return state, await asyncio.to_thread(self.results.rows_path, state)

    async def stop(self, job_id: str) -> dict[str, Any] | None:
        """Ask the job to stop, wherever it runs; its state, None if unknown."""
        own = self.running.get(job_id)
        if own is not None:
            own.stop.set()
        state = await asyncio.to_thread(self.results.read_state, job_id)
        if state is not None and own is None and state["state"] in RUNNING_STATES:
            await asyncio.to_thread(self.results.request_stop, job_id)  # another process runs it
        return state

    async def keep_alive(self) -> None:
        """Rewrite the state of running jobs that sit waiting (so nobody takes them for lost); sweep now and then."""
        swept = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_S / 2)
            try:
                for job in list(self.running.values()):
                    if time.monotonic() - job.published >= HEARTBEAT_S / 2:
                        await asyncio.to_thread(self._publish, job)
                if time.monotonic() - swept >= SWEEP_EVERY_S:
                    swept = time.monotonic()
                    await asyncio.to_thread(self.results.sweep)
            except OSError as exc:  # a full disk or a volume gone: said, and tried again next beat
                logger.warning("cannot write to the results directory: %s", exc)

    async def aclose(self) -> None:
        """Stop every job and wait for their threads; their last states are written. Idempotent."""
        self._closed = True
        for job in self.running.values():
            if not job.stop.is_set():
                job.stop_reason = SHUTDOWN_WARNING
            job.stop.set()
        tasks = [job.task for job in self.running.values() if job.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    def _publish(self, job: Job, *, at_most_every: float = 0.0) -> None:
        with job.lock:
            if job.lost or time.monotonic() - job.published < at_most_every:
                return
            job.published = time.monotonic()
            if self.results.declared_lost(job.id):
                # This process was paused past LOST_AFTER_S: clients were told the job failed, and
                # a state written now would not change that. Stop it, as its lost process would be.
                logger.warning("analysis %s was given up for lost while this process was not answering", job.id)
                job.lost = True
                job.stop.set()
                return
            self.results.write_state(job.snapshot())

    async def _run(self, job: Job) -> None:
        try:
            state, error, warning = await asyncio.to_thread(self._analyse, job)
        except WriteError as exc:  # the results directory's disk, not the video: the operator's to fix
            logger.error("analysis %s of %r: %s", job.id, job.name, exc)
            state, error, warning = "failed", f"the server could not store its rows: {exc.reason}", None
        except Exception as exc:
            logger.exception("analysis %s of %r failed", job.id, job.name)  # %r: an upload names itself
            state, error, warning = "failed", f"analysis failed: {type(exc).__name__}", None
        finally:
            if job.upload:
                await asyncio.to_thread(job.source.unlink, True)
            await asyncio.to_thread(self.results.clear_stop, job.id)
        # Published only now: whoever sees the job ended also finds its upload gone.
        job.error, job.warning, job.finished_at, job.state = error, warning, time.time(), state
        try:
            await asyncio.to_thread(self._publish, job)
        except OSError:
            logger.exception("cannot write the final state of analysis %s", job.id)
        finally:
            del self.running[job.id]

    def _stages(self, job: Job) -> Stages:
        """The two stages through the server's pipeline, called from the job's threads (they wait)."""

        def prepare(frame: np.ndarray, plan: FramePlan) -> Prepared:
            work = self._attempt(lambda: self.batcher.prepare(frame, plan))
            return asyncio.run_coroutine_threadsafe(work, self._loop).result(BATCH_RESULT_TIMEOUT_S)

        def classify(prepared: list[Prepared]) -> list[FrameResult]:
            started = time.monotonic()
            future = asyncio.run_coroutine_threadsafe(self._classify_all(prepared), self._loop)
            results = future.result(timeout=BATCH_RESULT_TIMEOUT_S)
            if self.live_consumers() > 0:  # an int read from this thread: a snapshot is enough
                job.stop.wait(LIVE_REST * (time.monotonic() - started))
            return results

        return Stages(prepare, classify)

    async def _classify_all(self, prepared: list[Prepared]) -> list[FrameResult]:
        async def one(frame: Prepared) -> FrameResult:
            result = await self._attempt(lambda: self.batcher.classify(frame))
            self.metrics.frame_done("analysis", len(result.faces))
            return result

        return list(await asyncio.gather(*(one(frame) for frame in prepared)))

    async def _attempt(self, stage: Callable[[], Awaitable[T]]) -> T:
        """What a pipeline stage returns, tried again while the server is busy or its --executor is briefly down."""
        outage_started: float | None = None
        while True:
            outcome = await attempt(self.metrics, stage())
            if not isinstance(outcome, Refused):
                return outcome
            if outcome.retry_after_s is None:
                raise RuntimeError(outcome.message)  # shutdown, or the batch failed: the job fails
            if outcome.reason is Reason.BUSY:
                await asyncio.sleep(OVERLOAD_BACKOFF_S)  # a full queue: the live clients come first
                continue
            # The --executor server is unreachable: wait for it, but not for ever.
            outage_started = outage_started or time.monotonic()
            if time.monotonic() - outage_started > EXECUTOR_OUTAGE_LIMIT_S:
                raise RuntimeError(outcome.message)
            await asyncio.sleep(outcome.retry_after_s)

    def _analyse(self, job: Job) -> tuple[str, str | None, str | None]:
        """The job's thread: the CLI's FileAnalysis through the server's pipeline (its two stages), rows to CSV.

        Returns the job's final (state, error, warning), for `_run` to publish.
        """
        try:
            limit = self.settings.max_video_frames
            info = open_source(job.source, count_limit=limit)
        except InputError as exc:
            return "failed", _without_path(str(exc), job.source), None
        if info.frame_count > limit:
            # Packets are counted up to limit + 1; a header's count is told as it is.
            if info.packets is not None:
                message = f"more than the {limit} frames {READ_LIMIT}: cut the video first"
            else:
                message = f"{info.frame_count} frames, more than the {limit} {READ_LIMIT}: cut the video first"
            return "failed", message, None
        job.frames_total, job.fps, job.state = info.frame_count, info.fps, "running"
        self._publish(job)
        analysis = FileAnalysis(
            info,
            self._stages(job),
            tracker_for(self.settings),
            frames_per_call=JOB_FRAMES_IN_FLIGHT,
            cadence=self.settings.cadence,
        )
        writer = RowWriter(self.results.rows_target(job.id), columns(analysis.smoothed))

        def on_frame(frame: AnalysedFrame) -> None:
            rows = frame_rows(job.name, frame, analysis.smoothed)
            writer.write(rows)
            with job.lock:
                job.summary.add(frame, len(rows))
                job.frames_done = analysis.frames_read
            self._publish(job, at_most_every=PROGRESS_EVERY_S)

        hit_limit = False

        def should_stop() -> bool:
            nonlocal hit_limit
            if job.stop.is_set() or self.results.stop_requested(job.id):
                return True
            hit_limit = analysis.frames_read >= limit  # past a header that understated the frames
            return hit_limit

        ending = None
        try:
            ending = analysis.run(on_frame, should_stop)
            if hit_limit and analysis.frames_read == info.frame_count:
                hit_limit, ending = False, analysis.ending  # the file has exactly `limit` frames: all read
        finally:
            if analysis.frames_read == 0 or job.lost:
                writer.discard()
            else:
                try:
                    finished = writer.finish(ending is Ending.DONE)
                except WriteError:  # what the disk took is kept as the incomplete rows: served
                    job.rows_file = incomplete_path(self.results.rows_target(job.id)).name
                    raise
                job.rows_file = finished.name if finished is not None else None
        if ending is Ending.STOPPED and hit_limit:
            announced = f"its header announced {info.frame_count}" if info.frame_count else "its header gave no count"
            warning = (
                f"stopped at frame {limit} ({announced}), the most {READ_LIMIT}; the rows up to there are in the CSV"
            )
            return "done", None, warning
        if ending is Ending.NO_FRAMES:
            return JOB_STATES[ending], analysis.describe_ending(ending), None
        if ending is Ending.STOPPED:
            return JOB_STATES[ending], None, job.stop_reason
        if ending is Ending.CUT_SHORT:
            warning = f"{analysis.describe_ending(ending)}; the rows up to there are in the CSV"
            return JOB_STATES[ending], None, warning
        return JOB_STATES[ending], None, None


def _without_path(message: str, path: Path) -> str:
    """Error messages name the file; an upload's temporary path means nothing to its sender."""
    return message.replace(f"{path}: ", "")
