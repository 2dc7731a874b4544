"""An analysis job whose results directory stops taking its rows (a full disk), in a real server process.

The server runs under `prlimit --fsize`, so its files may not grow past a few tens of kilobytes:
its writes fail with EFBIG as they fail with ENOSPC on a full volume, without root to mount a
small one. The job must fail saying why, and the rows the disk took stay downloadable.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest

from fer_async.bench.harness import free_port
from fer_async.synthetic import drifting_face_frames, write_video

from .procs import REPO_ROOT, server_process, tail, wait_until_serving

FILE_LIMIT_BYTES = 48 * 1024  # a few hundred rows


async def test_a_job_whose_rows_the_disk_refuses_fails_and_keeps_what_it_took(tmp_path: Path) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to limit the server's file sizes")
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = drifting_face_frames(400, width=320, height=240, side=200, start=(20, 20), step=(0, 0))
    write_video(videos / "long.mp4", frames, 25)
    port, log = free_port(), tmp_path / "server.log"
    program = ["prlimit", f"--fsize={FILE_LIMIT_BYTES}", sys.executable, "-m", "fer_async"]
    args = ["--video-dir", str(videos), "--results-dir", str(tmp_path / "results"), "--detector", "haar"]
    async with server_process(args, log, port, program=program, cwd=REPO_ROOT) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(base, proc, log)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/api/analyses", json={"video": "long.mp4"}) as resp:
                assert resp.status == 202, await resp.text()
                url = base + (await resp.json())["url"]
            for _ in range(600):
                async with session.get(url) as resp:
                    job = await resp.json()
                if job["state"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            assert job["state"] == "failed", (job, tail(log))
            assert "could not store its rows" in job["error"], job
            assert str(tmp_path) not in job["error"]  # the server's paths are its own
            async with session.get(f"{url}/csv") as resp:
                assert resp.status == 200, await resp.text()
                assert "incomplete" in resp.headers["Content-Disposition"]
                lines = (await resp.text()).splitlines()
            assert lines[0].startswith("file,frame,time_s,face,") and 100 < len(lines) < 400
            # Whole rows only: the write the disk refused may have taken part of one.
            assert {line.count(",") for line in lines} == {lines[0].count(",")}, lines[-1]
