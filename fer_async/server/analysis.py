"""Video analysis jobs in the server: upload a file (or pick one of /videos), watch progress, get a chart and a CSV.

    GET  /analyze                      the page (`?video=NAME` starts a job on a file of --video-dir)
    POST /api/analyses                 multipart field "video" (an upload) or JSON {"video": NAME}: 202 + the job
    GET  /api/analyses/{id}            state, progress, per-track summary; the timeline once done
    GET  /api/analyses/{id}/csv        the rows (as `python -m fer_async.analyze --out`)
    DELETE /api/analyses/{id}          stop a running job (its rows so far stay downloadable)

A job runs the CLI's own `FileAnalysis` (decode, Tracker, rows) in a worker thread, and its
frames go through the SAME batcher as the webcam frames, so it is one code path with the live
view and the CLI. Live clients are protected three ways:

* A job has at most JOB_FRAMES_IN_FLIGHT frames in the batcher at a time. The batcher is FIFO,
  so a live frame never waits behind more than that many frames per running job, never behind
  a whole file; a job's frames fill the batches' spare room, which is why it still runs fast.
* At most MAX_RUNNING_JOBS jobs run at once (more get 503 before their upload is read), so
  jobs together hold a bounded share of every batch and of the queue.
* A job that finds the queue full backs off and retries (each refusal counted as "busy" in
  fer_frame_errors_total, as any other), where a live frame would be dropped.
  Decoding, tracking and CSV writing happen on the job's thread, never on the event loop or
  the model thread.

Uploads are streamed to a temporary file in a private directory (size-limited: 413 past the
limit, the partial file removed at once); the file is removed when its job ends, whatever the
outcome, and the whole directory when the server stops. Results expire after RESULT_TTL_S.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import numpy as np
from aiohttp import BodyPartReader, web

from fer_async.analyze.core import FileAnalysis, FileSummary, InputError, columns, frame_rows, open_source
from fer_async.analyze.outputs import RowWriter
from fer_async.config import Settings
from fer_async.labels import EMOTIONS, FrameResult
from fer_async.metrics import Metrics
from fer_async.server.keys import BATCHER, METRICS, SETTINGS
from fer_async.server.outcomes import FrameBatcher, Reason, submit
from fer_async.video import VIDEO_EXTENSIONS, list_videos, safe_video_path

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
JOB_FRAMES_IN_FLIGHT = 2
MAX_RUNNING_JOBS = 2
MAX_KEPT_JOBS = 32  # finished jobs whose results are still downloadable
RESULT_TTL_S = 30 * 60.0
OVERLOAD_BACKOFF_S = 0.05
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
            payload["timeline"] = timeline_json(self.summary)
        return payload


def timeline_json(summary: FileSummary) -> dict[str, Any]:
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
    return {"emotions": list(EMOTIONS), "tracks": tracks}


class AnalysisJobs:
    """The running and recent jobs of one app."""

    def __init__(
        self, settings: Settings, batcher: FrameBatcher, metrics: Metrics, workdir: Path, max_upload_bytes: int
    ) -> None:
        self.settings = settings
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
            await asyncio.to_thread(self._analyse, job)
        except Exception as exc:
            logger.exception("analysis %s of %s failed", job.id, job.name)
            job.state, job.error = "failed", f"analysis failed: {type(exc).__name__}"
        finally:
            job.finished = time.monotonic()
            if job.upload:
                await asyncio.to_thread(job.source.unlink, True)

    def _classify(self, frames: list[np.ndarray]) -> list[FrameResult]:
        """Runs on the job's thread: submits the frames to the shared batcher and waits."""
        future = asyncio.run_coroutine_threadsafe(self._submit_all(frames), self._loop)
        return future.result(timeout=BATCH_RESULT_TIMEOUT_S)

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

    def _analyse(self, job: Job) -> None:
        """The job's thread: the CLI's FileAnalysis with the batcher as classifier, rows to CSV."""
        try:
            info = open_source(job.source)
        except InputError as exc:
            job.state, job.error = "failed", _without_path(str(exc), job.source)
            return
        job.frames_total, job.fps, job.state = info.frame_count, info.fps, "running"
        analysis = FileAnalysis(
            info,
            self._classify,
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
            job.state, job.error = "failed", "the video has no frames"
        elif job.stop.is_set():
            job.state = "stopped"
        else:
            job.state = "done"
            if analysis.stopped_early:
                job.warning = (
                    f"decoding stopped at frame {analysis.frames_read} of the {info.frame_count} the header "
                    "announces (truncated or corrupt); the rows up to there are in the CSV"
                )


def _remove_results(job: Job) -> None:
    job.csv_path.unlink(missing_ok=True)


def _without_path(message: str, path: Path) -> str:
    """Error messages name the file; an upload's temporary path means nothing to its sender."""
    return message.replace(f"{path}: ", "")


ANALYSIS_JOBS: web.AppKey[AnalysisJobs] = web.AppKey("analysis_jobs", AnalysisJobs)
# Set by `setup`; a test may lower it before the app starts.
MAX_UPLOAD_BYTES: web.AppKey[int] = web.AppKey("analysis_max_upload_bytes", int)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _job_or_404(request: web.Request) -> Job:
    job = request.app[ANALYSIS_JOBS].jobs.get(request.match_info["id"])
    if job is None:
        raise web.HTTPNotFound(text='{"error": "no such analysis"}', content_type="application/json")
    return job


async def _receive_upload(jobs: AnalysisJobs, part: BodyPartReader) -> Path | web.Response:
    """The uploaded video streamed to a temporary file, or the error to answer (the file removed)."""
    suffix = Path(part.filename or "").suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        return _error(415, f"send a video file ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    path = await asyncio.to_thread(jobs.new_upload_path, suffix)
    written = 0
    try:
        with path.open("wb") as out:
            while chunk := await part.read_chunk(UPLOAD_CHUNK):
                written += len(chunk)
                if written > jobs.max_upload_bytes:
                    raise _TooLarge
                await asyncio.to_thread(out.write, chunk)
    except BaseException as exc:
        await asyncio.to_thread(path.unlink, True)
        if isinstance(exc, _TooLarge):
            return _error(413, f"video larger than {jobs.max_upload_bytes} bytes")
        raise
    if written == 0:
        await asyncio.to_thread(path.unlink, True)
        return _error(400, "the uploaded file is empty")
    return path


class _TooLarge(Exception):
    pass


async def create_analysis(request: web.Request) -> web.Response:
    jobs = request.app[ANALYSIS_JOBS]
    try:
        jobs.check_capacity()  # before reading an upload nobody would analyse
    except JobsBusy as exc:
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "5"})
    if request.content_type == "application/json":
        try:
            body = await request.json()
            name = str(body["video"])
        except (ValueError, KeyError, TypeError):
            return _error(400, 'send {"video": NAME} for a file of the video directory')
        path = safe_video_path(request.app[SETTINGS].video_dir, name)
        if path is None:
            return _error(404, "no such video")
        job = jobs.start(name, path, upload=False)
    elif request.content_type.startswith("multipart/"):
        if request.content_length is not None and request.content_length > jobs.max_upload_bytes + UPLOAD_CHUNK:
            return _error(413, f"video larger than {jobs.max_upload_bytes} bytes")
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != "video":
            return _error(400, "multipart upload needs the file as its first field, named 'video'")
        received = await _receive_upload(jobs, part)
        if isinstance(received, web.Response):
            return received
        try:
            job = jobs.start(Path(part.filename or "upload").name, received, upload=True)
        except BaseException:
            received.unlink(missing_ok=True)
            raise
    else:
        return _error(415, "upload the video as multipart form field 'video', or POST JSON {\"video\": NAME}")
    return web.json_response(job.to_json(), status=202, headers={"Location": job.to_json()["url"]})


async def analysis_status(request: web.Request) -> web.Response:
    return web.json_response(_job_or_404(request).to_json())


async def stop_analysis(request: web.Request) -> web.Response:
    job = _job_or_404(request)
    job.stop.set()
    return web.json_response({"id": job.id, "state": job.state})


async def analysis_csv(request: web.Request) -> web.StreamResponse:
    job = _job_or_404(request)
    if job.running or not job.csv_path.is_file():
        return _error(409 if job.running else 404, "no CSV yet" if job.running else "this analysis has no rows")
    download = f"{Path(job.name).stem}{'.incomplete' if '.incomplete' in job.csv_path.name else ''}.csv"
    return web.FileResponse(
        job.csv_path,
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(download)}",
        },
    )


@aiohttp_jinja2.template("analyze.html")
async def analyze_page(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    return {
        "videos": list_videos(settings.video_dir),
        "max_upload_bytes": request.app[ANALYSIS_JOBS].max_upload_bytes,
        "max_upload_mb": request.app[ANALYSIS_JOBS].max_upload_bytes // (1024 * 1024),
    }


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="fer-analysis-"))
    jobs = AnalysisJobs(app[SETTINGS], app[BATCHER], app[METRICS], workdir, app[MAX_UPLOAD_BYTES])
    app[ANALYSIS_JOBS] = jobs
    yield
    await jobs.aclose()


def setup(app: web.Application, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Routes and the job registry; call after the batcher's cleanup context is registered."""
    app[MAX_UPLOAD_BYTES] = max_upload_bytes
    app.cleanup_ctx.append(_jobs_ctx)
    app.router.add_get("/analyze", analyze_page, name="analyze")
    app.router.add_post("/api/analyses", create_analysis, name="analyses")
    app.router.add_get("/api/analyses/{id}", analysis_status, name="analysis")
    app.router.add_delete("/api/analyses/{id}", stop_analysis)
    app.router.add_get("/api/analyses/{id}/csv", analysis_csv, name="analysis_csv")
