"""The /analyze page in a real Chromium on the real server: upload, progress, then charts and the CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import analyze_clips
import pytest

from fer_async.bench.harness import LiveServer

from .test_browser import TIMEOUT_MS, browser_session, open_page

pytestmark = pytest.mark.browser


async def test_upload_on_the_page_shows_progress_then_timeline_and_csv(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    clip = analyze_clips.face_clip(tmp_path / "upload.mp4", frames=20)
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        await page.goto(f"{live_server.base_url}/analyze")
        await page.set_input_files("#file", str(clip))
        await page.click("#send")
        await page.wait_for_function(
            "() => document.querySelector('#job-state').textContent.startsWith('done')", timeout=TIMEOUT_MS
        )
        assert await page.text_content("#job-name") == clip.name
        assert (await page.text_content("#job-state") or "").startswith("done: 20 of 20 frames")
        assert await page.locator("canvas[data-face]").count() >= 1
        assert await page.locator("#tracks tbody tr").count() >= 1
        href = await page.get_attribute("#csv", "href")
        assert href is not None and await page.is_visible("#csv")
        response = await page.request.get(f"{live_server.base_url}{href}")
        rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert sorted({int(r["frame"]) for r in rows}) == list(range(20))
        # The chart really drew: the canvas is not blank.
        painted = await page.evaluate(
            """() => { const c = document.querySelector('canvas[data-face]');
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"""
        )
        assert painted > 1000


async def test_the_analyse_link_of_a_server_video_runs_it(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    analyze_clips.face_clip(tmp_path / "videos" / "on_server.mp4", frames=10)
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        await page.goto(f"{live_server.base_url}/videos")
        await page.click("a[href='/analyze?video=on_server.mp4']")
        await page.wait_for_function(
            "() => document.querySelector('#job-state').textContent.startsWith('done')", timeout=TIMEOUT_MS
        )
        assert await page.text_content("#job-name") == "on_server.mp4"
        assert await page.is_visible("#csv")
