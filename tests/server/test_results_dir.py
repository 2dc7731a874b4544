"""The results directory: jobs answered by every server that shares it, whole files only, expiry, lost jobs."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from analyze_clips import face_clip

from fer_async.server.job_routes import ANALYSIS_JOBS
from fer_async.server.jobs import SHUTDOWN_WARNING
from fer_async.server.results_dir import (
    LOST_AFTER_S,
    LOST_MESSAGE,
    MAX_KEPT_JOBS,
    RESULT_TTL_S,
    ResultsDir,
    new_job_id,
)

from .helpers import MakeClient, upload_form, wait_for_job


async def test_two_servers_sharing_the_directory_answer_for_each_others_jobs(
    make_client: MakeClient, tmp_path: Path
) -> None:
    shared = tmp_path / "results"
    first, second = await make_client(results_dir=shared), await make_client(results_dir=shared)
    clip = face_clip(tmp_path / "long.mp4", frames=300)
    started = await first.post("/api/analyses", data=upload_form(clip))
    assert started.status == 202
    url = (await started.json())["url"]
    while True:  # the second server follows the first one's job as it runs
        seen = await (await second.get(url)).json()
        if seen["frames_done"] >= 4:
            break
        assert seen["state"] in ("queued", "running"), seen
        await asyncio.sleep(0.05)
    assert (await second.get(url + "/csv")).status == 409  # no rows while it runs
    stopped = await second.delete(url)  # a stop request that lands on the other server
    assert stopped.status == 200
    job, _ = await wait_for_job(second, url)
    assert job["state"] == "stopped" and 4 <= job["frames_done"] < 300 and job["warning"] is None
    assert job == await (await first.get(url)).json() | {"elapsed_s": job["elapsed_s"]}
    downloads = [await (await client.get(job["csv_url"])).read() for client in (first, second, first)]
    assert len(set(downloads)) == 1 and downloads[0].count(b"\n") > 4
    assert first.app[ANALYSIS_JOBS].running == {}
    for client in (first, second):
        for bad in ("AAAAAAAAAAAA", "..%2F..%2Fetc", "x" * 13):
            assert (await client.get(f"/api/analyses/{bad}")).status == 404
            assert (await client.delete(f"/api/analyses/{bad}")).status == 404
    assert sorted(p.name for p in shared.iterdir()) == sorted([f"{job['id']}.json", f"{job['id']}.incomplete.csv"])


async def test_a_job_stopped_by_its_servers_shutdown_says_so(make_client: MakeClient, tmp_path: Path) -> None:
    """A replica stopped (SIGTERM: a deploy, a scale-down) mid-job: not to be taken for the user's own Stop."""
    shared = tmp_path / "results"
    owner, reader = await make_client(results_dir=shared), await make_client(results_dir=shared)
    started = await owner.post("/api/analyses", data=upload_form(face_clip(tmp_path / "long.mp4", frames=300)))
    url = (await started.json())["url"]
    while True:
        if (await (await reader.get(url)).json())["frames_done"] >= 4:
            break
        await asyncio.sleep(0.05)
    await owner.close()  # the app's shutdown, as run_app does it on SIGTERM
    job = await (await reader.get(url)).json()
    assert job["state"] == "stopped" and job["error"] is None and 4 <= job["frames_done"] < 300, job
    assert job["warning"] == SHUTDOWN_WARNING, job
    assert (await reader.get(job["csv_url"])).status == 200


def state(job_id: str, *, at: float, running: bool = False, rows: str | None = None) -> dict[str, Any]:
    return {
        "id": job_id,
        "name": "clip.mp4",
        "state": "running" if running else "done",
        "frames_done": 10,
        "frames_total": 10,
        "video_fps": 10.0,
        "started_at": at - 1,
        "finished_at": None if running else at,
        "updated_at": at,
        "rows": 10,
        "error": None,
        "warning": None,
        "rows_file": rows,
        "tracks": [],
        "timeline": None,
    }


def put(results: ResultsDir, record: dict[str, Any]) -> None:
    """A state as another process wrote it, `updated_at` included (write_state stamps the present)."""
    (results.path / f"{record['id']}.json").write_text(json.dumps(record))


def test_a_running_job_whose_process_is_gone_reads_as_failed(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    alive, lost = new_job_id(), new_job_id()
    now = time.time()
    put(results, state(alive, at=now - LOST_AFTER_S / 2, running=True))
    put(results, state(lost, at=now - LOST_AFTER_S - 1, running=True))
    assert (results.read_state(alive) or {})["state"] == "running"
    read = results.read_state(lost) or {}
    assert read["state"] == "failed" and read["error"] == LOST_MESSAGE
    results.write_state(state(lost, at=now, running=True))  # its process comes back: the verdict stands
    assert results.read_state(lost) == read and results.declared_lost(lost) and not results.declared_lost(alive)


async def test_a_job_declared_lost_stays_lost_when_its_server_comes_back(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A replica paused past LOST_AFTER_S (SIGSTOP, a stuck VM) and then resumed: the verdict stands."""
    shared = tmp_path / "results"
    owner, reader = await make_client(results_dir=shared), await make_client(results_dir=shared)
    started = await owner.post("/api/analyses", data=upload_form(face_clip(tmp_path / "long.mp4", frames=300)))
    url = (await started.json())["url"]
    job_id = url.rsplit("/", 1)[1]
    while True:
        if (await (await reader.get(url)).json())["frames_done"] >= 4:
            break
        await asyncio.sleep(0.05)
    job = owner.app[ANALYSIS_JOBS].running[job_id]
    await asyncio.to_thread(job.lock.acquire)  # the owner can neither add a frame nor write its state
    try:
        last = json.loads((shared / f"{job_id}.json").read_text())
        put(ResultsDir(shared), last | {"updated_at": time.time() - LOST_AFTER_S - 1})
        lost = await (await reader.get(url)).json()
    finally:
        job.lock.release()  # it resumes
    assert lost["state"] == "failed" and lost["error"] == LOST_MESSAGE
    while job_id in owner.app[ANALYSIS_JOBS].running:
        for client in (reader, owner):
            assert (await (await client.get(url)).json())["state"] == "failed"
        await asyncio.sleep(0.05)
    for client in (reader, owner):
        assert await (await client.get(url)).json() == lost | {"elapsed_s": lost["elapsed_s"]}
    assert job.frames_done < 300  # the owner stopped the analysis when it found the verdict
    assert not list(shared.glob(f".{job_id}.part*"))
    rows = (await (await reader.get(lost["csv_url"])).text()).splitlines()
    assert lost["rows"] == len(rows) - 1 >= 4  # the rows it had written when it was given up


async def test_a_lost_jobs_rows_are_served_up_to_its_last_whole_row(make_client: MakeClient, tmp_path: Path) -> None:
    """A process killed mid-job leaves `.ID.part<pid>.csv`: its whole rows become the job's incomplete CSV."""
    shared = tmp_path / "results"
    shared.mkdir()
    client = await make_client(results_dir=shared)
    job_id = new_job_id()
    put(ResultsDir(shared), state(job_id, at=time.time() - LOST_AFTER_S - 1, running=True))
    part = shared / f".{job_id}.part4242.csv"
    part.write_bytes(b"file,frame\nclip.mp4,0\nclip.mp4,1\nclip.mp4,2,0.5")
    url = f"/api/analyses/{job_id}"
    job = await (await client.get(url)).json()
    assert job["state"] == "failed" and job["error"] == LOST_MESSAGE
    assert job["rows"] == 2 and job["csv_url"] == url + "/csv", job
    for _ in range(2):  # the verdict and its file stay as they were made
        response = await client.get(url + "/csv")
        assert response.status == 200
        assert "clip.incomplete.csv" in response.headers["Content-Disposition"]
        assert await response.read() == b"file,frame\nclip.mp4,0\nclip.mp4,1\n"
    assert await (await client.get(url)).json() == job
    # Readable as any other CSV of the directory (a temporary file's mode was 0600).
    assert (shared / f"{job_id}.incomplete.csv").stat().st_mode & 0o777 == part.stat().st_mode & 0o777


def test_sweep_removes_expired_jobs_and_leftovers_but_nothing_else(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    now = time.time()
    ids = [new_job_id() for _ in range(MAX_KEPT_JOBS + 3)]
    expired = ids[0]
    put(results, state(expired, at=now - RESULT_TTL_S - 10, rows=f"{expired}.csv"))
    (tmp_path / f"{expired}.csv").write_text("rows\n")
    (tmp_path / f"{expired}.stop").touch()
    for number, job_id in enumerate(ids[1:]):  # MAX_KEPT_JOBS + 2 recent ones: the two oldest go
        put(results, state(job_id, at=now - 100 + number, rows=f"{job_id}.incomplete.csv"))
        (tmp_path / f"{job_id}.incomplete.csv").write_text("rows\n")
    running = new_job_id()
    put(results, state(running, at=now, running=True))
    (tmp_path / f".{running}.part123.csv").write_text("rows so far\n")
    leftovers = [f".{new_job_id()}.part99.csv", ".tmp-abc123.json", ".tmp-def456.csv", f"{new_job_id()}.stop"]
    leftovers.append(f"{new_job_id()}.lost")
    strangers = ["notes.txt", "ABCDEFGHIJKL.txt", "keep"]
    for name in leftovers + strangers:
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (now - LOST_AFTER_S - 5, now - LOST_AFTER_S - 5))
    results.sweep()
    kept = {p.name for p in tmp_path.iterdir()}
    assert results.read_state(expired) is None and not {n for n in kept if expired in n}
    assert results.read_state(ids[1]) is None and results.read_state(ids[2]) is None
    assert all(results.read_state(job_id) is not None for job_id in ids[3:])
    assert len([n for n in kept if n.endswith(".incomplete.csv")]) == MAX_KEPT_JOBS
    assert {f"{running}.json", f".{running}.part123.csv"} <= kept  # a running job is never swept
    assert not set(leftovers) & kept
    assert set(strangers) <= kept  # a --results-dir that holds other files keeps them


def test_a_reader_never_sees_half_a_state(tmp_path: Path) -> None:
    results = ResultsDir(tmp_path)
    job_id = new_job_id()
    big = state(job_id, at=time.time(), running=True) | {"tracks": [{"face": n, "shares": {}} for n in range(500)]}
    results.write_state(big)
    done = threading.Event()
    problems: list[str] = []

    def read_all_the_time() -> None:
        while not done.is_set():
            read = results.read_state(job_id)
            if read is None or len(read["tracks"]) != 500:
                problems.append(repr(read)[:80])

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for frames in range(100):
            results.write_state(big | {"frames_done": frames})
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{job_id}.json"]  # no temporary file left


@pytest.mark.parametrize("job_id", ["../etc/passwd", "a/b", "", "AAAAAAAAAAA", "AAAAAAAAAAAA.json"])
def test_only_job_ids_reach_file_names(tmp_path: Path, job_id: str) -> None:
    results = ResultsDir(tmp_path / "results")
    (tmp_path / "results").mkdir()
    assert results.read_state(job_id) is None
    results.request_stop(job_id)
    assert list((tmp_path / "results").iterdir()) == []
