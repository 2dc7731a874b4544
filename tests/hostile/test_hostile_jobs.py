"""Hostile uploads and job requests against real servers on real sockets; a canary client must stay served.

Names a spreadsheet would run, names that try to leave a directory, ids that try to reach other
files, forged job states in a results directory two servers share: each gets its documented
answer, no file appears where it should not (`no_disk_writes`), and the canary is served.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from analyze_clips import face_clip
from testsupport import FORMULA_NAMES, raw_upload

from fer_async.bench.harness import free_port
from fer_async.labels import EMOTIONS
from fer_async.server.job_routes import ANALYSIS_JOBS
from fer_async.synthetic import write_video

from .conftest import REPLY_TIMEOUT_S, Canary, LiveServer, serve

# Names that try to leave the upload directory or the results directory, or to confuse a reader.
ESCAPING_NAMES = {
    "x.mp4": 'filename="../../../../tmp/x.mp4"',
    "evil.mp4": 'filename="..\\\\..\\\\evil.mp4"',
    "\u202egnp.mp4": "filename*=UTF-8''%E2%80%AEgnp.mp4",  # right-to-left override
    "a" * 200 + ".mp4": 'filename="' + "a" * 200 + '.mp4"',
}


async def finished(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3 * REPLY_TIMEOUT_S
    while True:
        async with http.get(url) as response:
            assert response.status == 200, await response.text()
            job: dict[str, Any] = await response.json()
        if job["state"] not in ("queued", "running"):
            return job
        assert loop.time() < deadline, job
        await asyncio.sleep(0.05)


async def test_upload_names_stay_data(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary, tmp_path: Path
) -> None:
    clip = await asyncio.to_thread(face_clip, tmp_path / "face.mp4", 2)
    for name, parameter in {**FORMULA_NAMES, **ESCAPING_NAMES}.items():
        body, headers = await asyncio.to_thread(raw_upload, clip, parameter)
        async with http.post(server.base_url + "/api/analyses", data=body, headers=headers) as response:
            text = await response.text()
            server.record(text)
            assert response.status == 202, (name, text)
            url = server.base_url + json.loads(text)["url"]
        job = await finished(http, url)
        assert job["state"] == "done" and job["name"] == name, job
        async with http.get(server.base_url + job["csv_url"]) as response:
            assert response.status == 200
            disposition = response.headers["Content-Disposition"]
            assert disposition.startswith("attachment; filename*=UTF-8''") and "/" not in disposition
            rows = list(csv.DictReader(io.StringIO(await response.text(), newline="")))
        cells = {row["file"] for row in rows}
        assert len(rows) >= 2 and {row["emotion"] for row in rows} <= set(EMOTIONS), name
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells), cells
    await canary.roundtrip()


async def test_an_upload_of_frames_over_8k_fails_with_its_reason(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary, tmp_path: Path
) -> None:
    """A small file of huge frames (10000x10000 MJPEG: 1.1 GB to decode and analyse) is refused from its header."""
    clip = await asyncio.to_thread(write_video, tmp_path / "huge.avi", [np.full((10000, 10000, 3), 128, np.uint8)], 10)
    body, headers = await asyncio.to_thread(raw_upload, clip, 'filename="huge.avi"')
    async with http.post(server.base_url + "/api/analyses", data=body, headers=headers) as response:
        text = await response.text()
        assert response.status == 202, text
    job = await finished(http, server.base_url + json.loads(text)["url"])
    assert job["state"] == "failed" and "10000x10000 frames" in job["error"], job
    assert "scale the video down" in job["error"] and str(tmp_path) not in job["error"], job
    await canary.roundtrip()


async def test_two_servers_sharing_results_refuse_forged_ids_and_states(
    hostile_settings: Any, real_model: Any, tmp_path: Path, face_jpeg: bytes
) -> None:
    """A results directory two servers share, with a forged state that points its rows at another file."""
    shared = tmp_path / "results"
    secret = tmp_path / "secret.csv"
    secret.write_text("not for you\n")
    first_settings = hostile_settings.replace(results_dir=shared)
    second_settings = first_settings.replace(port=free_port())
    async with serve(first_settings, real_model) as first, serve(second_settings, real_model) as second:
        forged = "AAAAAAAAAAAA"
        state = {
            "id": forged,
            "name": "forged.mp4",
            "state": "done",
            "frames_done": 1,
            "frames_total": 1,
            "video_fps": 1.0,
            "started_at": 0.0,
            "finished_at": 9e12,  # never expires by time
            "updated_at": 9e12,
            "rows": 1,
            "error": None,
            "warning": None,
            "rows_file": "../secret.csv",
            "tracks": [],
            "timeline": None,
        }
        await asyncio.to_thread((shared / f"{forged}.json").write_text, json.dumps(state))
        async with aiohttp.ClientSession() as http:
            canary = Canary(first, http, face_jpeg)
            await canary.connect()
            for live in (first, second):
                async with http.get(live.base_url + f"/api/analyses/{forged}") as response:
                    job = await response.json()
                assert response.status == 200 and job["csv_url"] is None, job  # its rows are not ours
                async with http.get(live.base_url + f"/api/analyses/{forged}/csv") as response:
                    body = await response.text()
                    live.record(body)
                    assert response.status == 404 and "not for you" not in body
                for target in ("..%2Fsecret", "..%2F..%2Fsecret.csv", "AAAAAAAAAAAA.json", "A" * 11, "A" * 13):
                    for method in ("GET", "DELETE"):
                        async with http.request(method, live.base_url + f"/api/analyses/{target}") as response:
                            live.record(await response.text())
                            assert response.status == 404, (method, target)
                    async with http.get(live.base_url + f"/api/analyses/{target}/csv") as response:
                        assert response.status == 404, target
            assert sorted(p.name for p in shared.iterdir()) == [f"{forged}.json"]  # no stop request for a bad id
            assert first.app[ANALYSIS_JOBS].running == {} and second.app[ANALYSIS_JOBS].running == {}
            await canary.roundtrip()
            assert canary.ws is not None
            await canary.ws.close()
        first.assert_no_leaks()
        second.assert_no_leaks()
    assert secret.read_text() == "not for you\n"


async def test_control_characters_in_an_upload_name_stay_out_of_the_csv(
    server: LiveServer, http: aiohttp.ClientSession, canary: Canary, tmp_path: Path
) -> None:
    """NUL, ESC (a terminal's escapes when someone cats the CSV) and the line breaks that
    str.splitlines knows beyond CR and LF went into the file column byte for byte."""
    clip = await asyncio.to_thread(face_clip, tmp_path / "face.mp4", 2)
    parameter = "filename*=UTF-8''a%00b%1B%5B2Jc%0Bd%C2%85e%E2%80%A8f.mp4"
    body, headers = await asyncio.to_thread(raw_upload, clip, parameter)
    async with http.post(server.base_url + "/api/analyses", data=body, headers=headers) as response:
        text = await response.text()
        assert response.status == 202, text
    job = await finished(http, server.base_url + json.loads(text)["url"])
    assert job["state"] == "done" and job["name"] == "a\x00b\x1b[2Jc\x0bd\x85e\u2028f.mp4", job  # the name as sent
    async with http.get(server.base_url + job["csv_url"]) as response:
        assert response.status == 200
        content = await response.text()
    rows = list(csv.DictReader(io.StringIO(content, newline="")))
    assert len(content.splitlines()) == len(rows) + 1 >= 3  # one line per row, for every reader
    cells = {row["file"] for row in rows}
    assert cells == {"a\ufffdb\ufffd[2Jc d e f.mp4"}, cells
    await canary.roundtrip()
