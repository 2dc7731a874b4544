"""/analyze and /api/analyses on the real app: uploads, limits, progress, CSV, and one code path with the stream."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from analyze_clips import face_clip, not_a_video, timed_clip
from testsupport import FORMULA_NAMES, raw_upload

from fer_async.analyze import analyze_video, columns
from fer_async.analyze.core import open_source
from fer_async.config import Settings
from fer_async.detector import YuNetDetector
from fer_async.labels import EMOTIONS
from fer_async.schedule import DetectionSchedule
from fer_async.server import jobs as jobs_module
from fer_async.server.app import create_app
from fer_async.server.job_routes import ANALYSIS_JOBS
from fer_async.server.jobs import JOB_FRAMES_IN_FLIGHT
from fer_async.server.keys import ANALYZER, METRICS, PIPELINE, SETTINGS
from fer_async.synthetic import astronaut_bgr, compose_frame, write_video
from fer_async.video import VIDEO_MAX_WIDTH, VideoReader

from .helpers import CLIP_NAME, Client, upload_form, wait_for_job

SHARED_VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videos"

MakeAnalysisClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_analysis_client(aiohttp_client: Any, real_model: Any, base_settings: Settings) -> MakeAnalysisClient:
    async def make(max_upload_bytes: int | None = None) -> Client:
        settings = (
            base_settings if max_upload_bytes is None else base_settings.replace(max_video_bytes=max_upload_bytes)
        )
        app = create_app(settings, model=real_model)
        client: Client = await aiohttp_client(app)
        return client

    return make


def uploads_left(client: Client) -> list[str]:
    return sorted(p.name for p in client.app[ANALYSIS_JOBS].uploads_dir.glob("upload-*"))


async def test_an_upload_is_analysed_with_progress_then_csv_and_timeline(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    client = await make_analysis_client()
    clip = face_clip(tmp_path / "face.mp4", frames=24)
    response = await client.post("/api/analyses", data=upload_form(clip))
    assert response.status == 202, await response.text()
    started = await response.json()
    assert started["state"] in ("queued", "running") and started["csv_url"] is None
    job, seen = await wait_for_job(client, started["url"])
    assert job["state"] == "done" and job["error"] is None and job["warning"] is None
    assert job["frames_done"] == job["frames_total"] == 24
    assert seen == sorted(seen)  # progress only moves forward
    assert uploads_left(client) == []  # the uploaded file is gone once analysed
    (track,) = [t for t in job["timeline"]["tracks"] if t["face"] == 1]
    assert len(track["times"]) == 24 and set(track["scores"]) == set(EMOTIONS)

    response = await client.get(job["csv_url"])
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "face.csv" in response.headers["Content-Disposition"]
    reader = csv.DictReader(io.StringIO(await response.text()))
    rows = list(reader)
    assert reader.fieldnames == list(columns(smoothed=True))
    assert sorted({int(r["frame"]) for r in rows}) == list(range(24))
    assert job["rows"] == len(rows)

    # One code path: the API's analysis of the same file with the server's Analyzer (its detector,
    # its model) gives the same faces and labels.
    analyzer = client.app[ANALYZER]
    expected = await asyncio.to_thread(lambda: list(analyze_video(clip, analyzer=analyzer)))
    assert [(int(r["frame"]), r["face"], r["x"], r["w"]) for r in rows] == [
        (r["frame"], str(r["face"]), str(r["x"]), str(r["w"])) for r in expected
    ]
    assert [r["emotion"] for r in rows] == [r["emotion"] for r in expected]
    for got, want in zip(rows, expected, strict=True):
        for name in EMOTIONS:
            assert float(got[name]) == pytest.approx(want[name], abs=2e-3)


async def test_a_face_kept_by_its_region_in_the_dark_is_kept_as_the_cli_keeps_it(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    # The light goes down to a tenth after frame 0: full detections miss the face there, its region
    # finds it. Jobs restarted their schedule every 10 frames (their own batches' unit), where the
    # CLI restarts every 1040: their CSV lost the face the CLI kept.
    bright = compose_frame(astronaut_bgr(), 60, 20, side=160, seed=0)
    frames = [bright] + [(bright.astype(np.float32) * 0.1).astype(np.uint8)] * 29
    clip = write_video(tmp_path / "dimmed.avi", frames, 10.0)  # MJPG: mp4v blurs the dark face away
    client = await make_analysis_client()
    response = await client.post("/api/analyses", data=upload_form(clip))
    assert response.status == 202, await response.text()
    job, _ = await wait_for_job(client, (await response.json())["url"])
    rows = list(csv.DictReader(io.StringIO(await (await client.get(job["csv_url"])).text())))
    analyzer = client.app[ANALYZER]
    expected = await asyncio.to_thread(lambda: list(analyze_video(clip, analyzer=analyzer)))
    assert [(int(r["frame"]), r["face"], r["x"]) for r in rows] == [
        (r["frame"], "" if r["face"] is None else str(r["face"]), "" if r["x"] is None else str(r["x"]))
        for r in expected
    ]
    if isinstance(analyzer.detector, YuNetDetector):
        assert all(r["face"] == "1" for r in rows)


async def test_labels_agree_with_what_the_stream_path_computes(make_analysis_client: MakeAnalysisClient) -> None:
    """The MJPEG stream reads a file with VideoReader (<= 640 px) and submits each frame to the pipeline,
    with the hints of its detection schedule: the analysis searches the same regions of the same frames."""
    clip = SHARED_VIDEOS / "single_face.mp4"
    if not clip.is_file():
        pytest.skip(f"real clip not found at {clip}")
    client = await make_analysis_client()
    pipeline = client.app[PIPELINE]
    schedule = DetectionSchedule(client.app[SETTINGS].detect_every)
    stream: list[tuple[int, tuple[int, ...], str]] = []
    frame_index = 0
    async for frame in VideoReader(clip, loop=False, max_width=VIDEO_MAX_WIDTH).frames():
        result = await pipeline.submit(frame, schedule.plan())
        schedule.observe(result.width, result.height, [face.box for face in result.faces])
        scale = 640 / result.width  # single_face.mp4 is 640 wide: nothing is shrunk
        for face in result.faces:
            stream.append((frame_index, tuple(round(v * scale) for v in face.box), face.emotion))
        frame_index += 1
    analyzer = client.app[ANALYZER]
    rows = await asyncio.to_thread(lambda: list(analyze_video(clip, analyzer=analyzer, smoothing_ms=0, label_margin=0)))
    analysed = [(r["frame"], (r["x"], r["y"], r["w"], r["h"]), r["emotion"]) for r in rows if r["face"] is not None]
    assert frame_index == 72
    assert analysed == stream


async def test_an_upload_over_the_limit_is_413_and_leaves_no_file(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    client = await make_analysis_client(max_upload_bytes=20_000)
    clip = face_clip(tmp_path / "face.mp4", frames=24)
    assert clip.stat().st_size > 40_000  # so the limit is hit while streaming, not from Content-Length
    response = await client.post("/api/analyses", data=upload_form(clip))
    assert response.status == 413
    assert "larger than 20000 bytes" in (await response.json())["error"]
    assert uploads_left(client) == []
    jobs = client.app[ANALYSIS_JOBS]
    assert jobs.running == {} and list(jobs.results.path.iterdir()) == []


async def test_a_file_that_is_not_a_video_fails_with_a_clear_error(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    client = await make_analysis_client()
    response = await client.post("/api/analyses", data=upload_form(not_a_video(tmp_path / "notes.mp4")))
    assert response.status == 202
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert job["state"] == "failed"
    assert job["error"] == "not a video or image OpenCV can read"  # no server path in it
    assert job["csv_url"] is None
    assert uploads_left(client) == []


async def test_upload_checks_name_and_form(make_analysis_client: MakeAnalysisClient, tmp_path: Path) -> None:
    client = await make_analysis_client()
    text = not_a_video(tmp_path / "notes.txt")
    response = await client.post("/api/analyses", data=upload_form(text))
    assert response.status == 415
    response = await client.post("/api/analyses", data=b"raw", headers={"Content-Type": "video/mp4"})
    assert response.status == 415
    form = aiohttp.FormData()
    form.add_field("image", b"x", filename="a.mp4")
    response = await client.post("/api/analyses", data=form)
    assert response.status == 400
    assert uploads_left(client) == []


async def test_a_file_of_the_video_directory_by_name(make_analysis_client: MakeAnalysisClient) -> None:
    client = await make_analysis_client()
    for name in ("../clip.avi", "nope.avi", ".hidden.avi"):
        response = await client.post("/api/analyses", json={"video": name})
        assert response.status == 404, name
    response = await client.post("/api/analyses", json={"video": CLIP_NAME})
    assert response.status == 202
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert job["state"] == "done" and job["frames_done"] == 12
    assert job["tracks"] and job["tracks"][0]["face"] == 1


async def test_a_job_never_has_more_than_its_share_of_frames_in_a_batch(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    """Alone on the server, a job's batches hold at most JOB_FRAMES_IN_FLIGHT frames (the batcher's own metric)."""
    client = await make_analysis_client()
    registry = client.app[METRICS].registry
    response = await client.post("/api/analyses", data=upload_form(face_clip(tmp_path / "face.mp4", frames=40)))
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert job["state"] == "done" and job["frames_done"] == 40
    batches = registry.get_sample_value("fer_batch_size_count")
    frames = registry.get_sample_value("fer_batch_size_sum")
    small = registry.get_sample_value("fer_batch_size_bucket", {"le": f"{float(JOB_FRAMES_IN_FLIGHT)}"})
    assert frames == 40 and batches is not None and batches >= 40 / JOB_FRAMES_IN_FLIGHT
    assert small == batches  # no batch had more of the job's frames than its share
    assert registry.get_sample_value("fer_frames_total", {"source": "analysis"}) == 40


async def test_stop_keeps_the_rows_so_far_marked_incomplete(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    client = await make_analysis_client()
    response = await client.post("/api/analyses", data=upload_form(face_clip(tmp_path / "face.mp4", frames=200)))
    url = (await response.json())["url"]
    while True:
        if (await (await client.get(url)).json())["frames_done"] >= 4:
            break
        await asyncio.sleep(0.05)
    assert (await client.delete(url)).status == 200
    job, _ = await wait_for_job(client, url)
    assert job["state"] == "stopped" and 4 <= job["frames_done"] < 200
    response = await client.get(job["csv_url"])
    assert "face.incomplete.csv" in response.headers["Content-Disposition"]
    assert len((await response.text()).splitlines()) > 4


async def test_the_pages_link_the_analysis(client: Client) -> None:
    page = await (await client.get("/analyze")).text()
    assert 'id="upload"' in page and "/static/analyze.js" in page and CLIP_NAME in page
    videos = await (await client.get("/videos")).text()
    assert f'href="/analyze?video={CLIP_NAME}"' in videos
    assert (await client.get("/static/analyze.js")).status == 200


async def test_shutdown_removes_every_file(make_analysis_client: MakeAnalysisClient, tmp_path: Path) -> None:
    client = await make_analysis_client()
    jobs = client.app[ANALYSIS_JOBS]
    response = await client.post("/api/analyses", data=upload_form(face_clip(tmp_path / "face.mp4", frames=200)))
    assert response.status == 202
    await client.close()
    assert not jobs.uploads_dir.exists() and not jobs.results.path.exists()


async def test_a_third_analysis_waits_for_one_of_two_to_end(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    client = await make_analysis_client()
    clip = face_clip(tmp_path / "face.mp4", frames=200)
    urls = []
    for _ in range(2):
        response = await client.post("/api/analyses", data=upload_form(clip))
        assert response.status == 202
        urls.append((await response.json())["url"])
    response = await client.post("/api/analyses", data=upload_form(clip))
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert "2 analyses are already running" in (await response.json())["error"]
    assert len(uploads_left(client)) <= 2  # the refused upload was never stored
    for url in urls:
        await client.delete(url)
        job, _ = await wait_for_job(client, url)
        assert job["state"] in ("stopped", "done")
    response = await client.post("/api/analyses", json={"video": CLIP_NAME})
    assert response.status == 202


async def test_upload_names_that_a_spreadsheet_would_run_are_neutralised_in_the_csv(
    make_analysis_client: MakeAnalysisClient, tmp_path: Path
) -> None:
    client = await make_analysis_client()
    clip = face_clip(tmp_path / "face.mp4", frames=3)
    for name, parameter in FORMULA_NAMES.items():
        body, headers = raw_upload(clip, parameter)
        response = await client.post("/api/analyses", data=body, headers=headers)
        assert response.status == 202, await response.text()
        job, _ = await wait_for_job(client, (await response.json())["url"])
        assert job["state"] == "done" and job["name"] == name  # the JSON keeps the name exactly
        text = await (await client.get(job["csv_url"])).text()
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        # A leading quote, and each row on one line (a CR inside a cell would split the row).
        cell = "'" + name.replace("\r", " ")
        assert len(rows) >= 3 and {row["file"] for row in rows} == {cell}, (name, rows[0]["file"])
        assert {row["emotion"] for row in rows} <= set(EMOTIONS)


async def test_a_video_over_the_frame_limit_is_refused_from_its_header(
    aiohttp_client: Any, real_model: Any, base_settings: Settings, tmp_path: Path
) -> None:
    # A small upload can hold a great many frames (2 MB: 100,000 tiny ones): the frame count, not
    # the size, bounds what a job costs.
    client = await aiohttp_client(create_app(base_settings.replace(max_video_frames=20), model=real_model))
    page = await (await client.get("/analyze")).text()
    assert "and 20 frames" in page
    response = await client.post("/api/analyses", data=upload_form(face_clip(tmp_path / "face.mp4", frames=24)))
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert job["state"] == "failed" and job["csv_url"] is None
    assert job["error"] == (
        "24 frames, more than the 20 an analysis on this server reads (--max-video-frames): cut the video first"
    )
    assert uploads_left(client) == []


async def test_a_header_that_understates_the_frames_stops_at_the_limit(
    aiohttp_client: Any, real_model: Any, base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await aiohttp_client(create_app(base_settings.replace(max_video_frames=10), model=real_model))
    monkeypatch.setattr(
        jobs_module, "open_source", lambda path, **kw: dataclasses.replace(open_source(path, **kw), frame_count=8)
    )
    response = await client.post("/api/analyses", data=upload_form(face_clip(tmp_path / "face.mp4", frames=24)))
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert job["state"] == "done" and job["frames_done"] == 10
    assert job["warning"] == (
        "stopped at frame 10 (its header announced 8), the most an analysis on this server reads "
        "(--max-video-frames); "
        "the rows up to there are in the CSV"
    )
    response = await client.get(job["csv_url"])
    assert "face.incomplete.csv" in response.headers["Content-Disposition"]
    frames = {row["frame"] for row in csv.DictReader(io.StringIO(await response.text()))}
    assert frames == {str(i) for i in range(10)}
    assert uploads_left(client) == []


async def test_a_video_of_exactly_the_frame_limit_is_complete(
    aiohttp_client: Any, real_model: Any, base_settings: Settings, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(base_settings.replace(max_video_frames=12), model=real_model))
    response = await client.post("/api/analyses", data=upload_form(face_clip(tmp_path / "face.mp4", frames=12)))
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert (job["state"], job["warning"], job["frames_done"]) == ("done", None, 12)
    response = await client.get(job["csv_url"])
    assert response.headers["Content-Disposition"].endswith("''face.csv")


async def test_a_webms_frames_are_counted_not_guessed_against_the_limit(
    aiohttp_client: Any, real_model: Any, base_settings: Settings, tmp_path: Path
) -> None:
    # OpenCV's count for a WebM is its duration times a guessed 24 fps: 12 frames a second apart
    # read as about 265, which the limit refused.
    client = await aiohttp_client(create_app(base_settings.replace(max_video_frames=20), model=real_model))
    slow = timed_clip(tmp_path / "slow.webm", [i * 1000 for i in range(12)])
    response = await client.post("/api/analyses", data=upload_form(slow))
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert (job["state"], job["warning"], job["frames_done"], job["frames_total"]) == ("done", None, 12, 12)
    # A browser's recording has no count at all: its packets are counted, up to the limit + 1.
    recorded = timed_clip(tmp_path / "recorded.webm", [i * 66 for i in range(30)], live=True)
    response = await client.post("/api/analyses", data=upload_form(recorded))
    job, _ = await wait_for_job(client, (await response.json())["url"])
    assert job["state"] == "failed"
    assert job["error"] == (
        "more than the 20 frames an analysis on this server reads (--max-video-frames): cut the video first"
    )
    assert uploads_left(client) == []
