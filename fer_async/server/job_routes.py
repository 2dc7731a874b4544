"""Video analysis jobs in the server: upload a file (or pick one of /videos), watch progress, get a chart and a CSV.

    GET  /analyze                      the page (`?video=NAME` starts a job on a file of --video-dir)
    POST /api/analyses                 multipart field "video" (an upload) or JSON {"video": NAME}: 202 + the job
    GET  /api/analyses/{id}            state, progress, per-track summary; the timeline once done
    GET  /api/analyses/{id}/csv        the rows (as `python -m fer_async.analyze --out`)
    DELETE /api/analyses/{id}          stop a running job (its rows so far stay downloadable)

A job runs the CLI's own `FileAnalysis` (decode, Tracker, rows) in a worker thread
(`fer_async.server.jobs`), and its frames go through the SAME batcher as the webcam frames, so
it is one code path with the live view and the CLI. Its state and rows are kept in the results
directory (`--results-dir`, `fer_async.server.results_dir`), so every worker and every replica
sharing that directory answers for it, and a stop request reaches it wherever it lands. Live
clients are protected three ways:

* A job has at most JOB_FRAMES_IN_FLIGHT frames in the batcher at a time. The batcher is FIFO,
  so a live frame never waits behind more than that many frames per running job, never behind
  a whole file; a job's frames fill the batches' spare room, which is why it still runs fast.
* At most MAX_RUNNING_JOBS jobs run at once in each server process (more get 503 before their
  upload is read), so jobs together hold a bounded share of every batch and of the queue.
* While anyone watches live (a WebSocket client or an MJPEG viewer), a job rests after each
  of its chunks as long as the chunk took (LIVE_REST), so it takes at most about half of the
  time and CPU it would take alone; with nobody live it runs at full speed.
* A job that finds the queue full backs off and retries (each refusal counted as "busy" in
  fer_frame_errors_total, as any other), where a live frame would be dropped.
  Decoding, tracking and CSV writing happen on the job's thread, never on the event loop or
  the model thread.

Uploads are streamed to a temporary file in this process's private directory (size-limited:
413 past the limit, the partial file removed at once); the file is removed when its job ends,
whatever the outcome, and the whole directory when the server stops. Results expire after
RESULT_TTL_S; a results directory the server made itself goes when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path, PureWindowsPath
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import BodyPartReader, web

from fer_async.scratch import remove_scratch, scratch_dir
from fer_async.server.jobs import UPLOAD_CHUNK, AnalysisJobs, JobsBusy
from fer_async.server.keys import METRICS, PIPELINE, SETTINGS, VIDEO_HUB, WEBSOCKETS
from fer_async.server.results_dir import RUNNING_STATES, ResultsDir
from fer_async.server.uploads import (
    CLIENT_FAILURES,
    UploadTooLarge,
    body_chunks,
    client_failure,
    expect_unless,
    next_part,
    read_limited,
    upload_deadline,
)
from fer_async.video import VIDEO_EXTENSIONS, list_videos, safe_video_path

logger = logging.getLogger(__name__)

ANALYSIS_JOBS: web.AppKey[AnalysisJobs] = web.AppKey("analysis_jobs", AnalysisJobs)
# Set by `setup`; a test may lower it before the app starts.
MAX_UPLOAD_BYTES: web.AppKey[int] = web.AppKey("analysis_max_upload_bytes", int)
# {"video": NAME} names a file of --video-dir: a body longer than this is no such request.
MAX_JSON_BYTES = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _busy(exc: JobsBusy) -> web.Response:
    return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "5"})


def _no_such_analysis() -> web.HTTPNotFound:
    return web.HTTPNotFound(text='{"error": "no such analysis"}', content_type="application/json")


async def _receive_upload(jobs: AnalysisJobs, part: BodyPartReader, deadline: float) -> Path | web.Response:
    """The uploaded video streamed to a temporary file, or the error to answer (the file removed)."""
    suffix = Path(part.filename or "").suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        return _error(415, f"send a video file ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    path = await asyncio.to_thread(jobs.new_upload_path, suffix)
    written = 0
    try:
        with path.open("wb") as out:
            async for chunk in body_chunks(part, jobs.max_upload_bytes, UPLOAD_CHUNK, deadline):
                written += len(chunk)
                await asyncio.to_thread(out.write, chunk)
    except BaseException as exc:
        await asyncio.to_thread(path.unlink, True)
        if isinstance(exc, UploadTooLarge):
            return _error(413, f"video larger than {jobs.max_upload_bytes} bytes (--max-video-bytes)")
        if isinstance(exc, CLIENT_FAILURES):
            return client_failure(exc, "POST /api/analyses")
        raise
    if written == 0:
        await asyncio.to_thread(path.unlink, True)
        return _error(400, "the uploaded file is empty")
    return path


def _upload_name(part: BodyPartReader) -> str:
    """The file's own name, without any folders a client put before it (/ or \\), as valid text:
    bytes that are not UTF-8 (they arrive as lone surrogates) become U+FFFD, as the CSV is UTF-8."""
    name = PureWindowsPath(part.filename or "upload").name or "upload"
    try:
        raw = name.encode("utf-8", "surrogateescape")  # back to the bytes that were sent
    except UnicodeEncodeError:  # a surrogate no byte stands for (filename*=UTF-8''%ED%A0%80)
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def analysis_refusal(request: web.Request) -> web.Response | None:
    """The answer to a request refused from its headers alone (no job slot, a body too large), or None."""
    jobs = request.app[ANALYSIS_JOBS]
    try:
        jobs.check_capacity()  # before reading an upload nobody would analyse
    except JobsBusy as exc:
        return _busy(exc)
    length = request.content_length
    if request.content_type == "application/json" and length is not None and length > MAX_JSON_BYTES:
        return _json_too_large()
    if (
        request.content_type.startswith("multipart/")
        and length is not None
        and length > jobs.max_upload_bytes + UPLOAD_CHUNK
    ):
        return _error(413, f"video larger than {jobs.max_upload_bytes} bytes (--max-video-bytes)")
    return None


def _json_too_large() -> web.Response:
    return _error(413, f"a JSON body is at most {MAX_JSON_BYTES} bytes")


async def create_analysis(request: web.Request) -> web.Response:
    jobs = request.app[ANALYSIS_JOBS]
    if (refused := analysis_refusal(request)) is not None:
        return refused
    if request.content_type == "application/json":
        try:
            deadline = upload_deadline(MAX_JSON_BYTES)
            body = json.loads(await read_limited(request.content, MAX_JSON_BYTES, MAX_JSON_BYTES, deadline))
            name = str(body["video"])
        except UploadTooLarge:  # chunked, without a length to refuse first
            return _json_too_large()
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: [[[[... nested too deep
            return _error(400, 'send {"video": NAME} for a file of the video directory')
        except CLIENT_FAILURES as exc:
            return client_failure(exc, "POST /api/analyses")
        path = safe_video_path(request.app[SETTINGS].video_dir, name)
        if path is None:
            return _error(404, "no such video")
        job = await jobs.start(name, path, upload=False)
    elif request.content_type.startswith("multipart/"):
        try:
            deadline = upload_deadline(jobs.max_upload_bytes)
            part = await next_part(await request.multipart(), deadline)
        except CLIENT_FAILURES as exc:
            return client_failure(exc, "POST /api/analyses")
        if not isinstance(part, BodyPartReader) or part.name != "video":
            return _error(400, "multipart upload needs the file as its first field, named 'video'")
        try:
            with jobs.receiving():
                received = await _receive_upload(jobs, part, deadline)
        except JobsBusy as exc:  # others started while this request's headers arrived
            return _busy(exc)
        if isinstance(received, web.Response):
            return received
        try:
            job = await jobs.start(_upload_name(part), received, upload=True)
        except BaseException as exc:
            await asyncio.to_thread(received.unlink, True)
            if isinstance(exc, JobsBusy):  # others started while this one uploaded
                return _busy(exc)
            raise
    else:
        return _error(415, "upload the video as multipart form field 'video', or POST JSON {\"video\": NAME}")
    return web.json_response(job, status=202, headers={"Location": job["url"]})


async def analysis_status(request: web.Request) -> web.Response:
    job = await request.app[ANALYSIS_JOBS].status(request.match_info["id"])
    if job is None:
        raise _no_such_analysis()
    return web.json_response(job)


async def stop_analysis(request: web.Request) -> web.Response:
    state = await request.app[ANALYSIS_JOBS].stop(request.match_info["id"])
    if state is None:
        raise _no_such_analysis()
    return web.json_response({"id": state["id"], "state": state["state"]})


async def analysis_csv(request: web.Request) -> web.StreamResponse:
    found = await request.app[ANALYSIS_JOBS].rows(request.match_info["id"])
    if found is None:
        raise _no_such_analysis()
    state, rows = found
    if rows is None:
        running = state["state"] in RUNNING_STATES
        return _error(409 if running else 404, "no CSV yet" if running else "this analysis has no rows")
    download = f"{Path(state['name']).stem}{'.incomplete' if '.incomplete' in rows.name else ''}.csv"
    return web.FileResponse(
        rows,
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(download, safe='')}",
        },
    )


@aiohttp_jinja2.template("analyze.html")
async def analyze_page(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    return {
        "videos": await asyncio.to_thread(list_videos, settings.video_dir),  # thousands of files: 330 ms
        "max_upload_bytes": request.app[ANALYSIS_JOBS].max_upload_bytes,
        "max_upload_mb": _megabytes(request.app[ANALYSIS_JOBS].max_upload_bytes),
        "max_video_frames": settings.max_video_frames,
    }


def _megabytes(size: int) -> str:
    """As the page's script writes them: "200", "1.5", "0.95" (a small limit is not "0 MB")."""
    mb = size / (1024 * 1024)
    return f"{mb:.0f}" if mb >= 10 else f"{mb:.1f}" if mb >= 1 else f"{mb:.2f}"


async def _jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    made = settings.results_dir is None  # ours alone (no --workers): removed with the server
    if settings.results_dir is None:
        results_path = await asyncio.to_thread(scratch_dir, "fer-analyses-")
    else:
        results_path = settings.results_dir
        await asyncio.to_thread(results_path.mkdir, parents=True, exist_ok=True)
    uploads = await asyncio.to_thread(scratch_dir, "fer-uploads-")
    connections, hub = app[WEBSOCKETS], app[VIDEO_HUB]
    jobs = AnalysisJobs(
        settings,
        app[PIPELINE],
        app[METRICS],
        ResultsDir(results_path),
        uploads,
        app[MAX_UPLOAD_BYTES],
        live_consumers=lambda: len(connections) + hub.viewers,
    )
    app[ANALYSIS_JOBS] = jobs
    await asyncio.to_thread(jobs.results.sweep)  # what expired while no process was running
    heartbeat = asyncio.create_task(jobs.keep_alive(), name="analysis heartbeat")
    yield
    await jobs.aclose()
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat
    await asyncio.to_thread(remove_scratch, uploads)
    if made:
        await asyncio.to_thread(remove_scratch, results_path)


def setup(app: web.Application, max_upload_bytes: int) -> None:
    """Routes and the job registry; call after the batcher's cleanup context is registered."""
    app[MAX_UPLOAD_BYTES] = max_upload_bytes
    app.cleanup_ctx.append(_jobs_ctx)
    app.router.add_get("/analyze", analyze_page, name="analyze")
    app.router.add_post(
        "/api/analyses", create_analysis, name="analyses", expect_handler=expect_unless(analysis_refusal)
    )
    app.router.add_get("/api/analyses/{id}", analysis_status, name="analysis")
    app.router.add_delete("/api/analyses/{id}", stop_analysis)
    app.router.add_get("/api/analyses/{id}/csv", analysis_csv, name="analysis_csv")
