"""The /analyze and /videos pages in a real Chromium on the real server: upload, progress, then
charts (time axis, ids, what the scores are) and the CSV; streams at their own size; the note on
what the pages read, on every page."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

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
        # Ids read "#1" as on the webcam page; the page says what the chart and the shares show.
        assert (await page.text_content("#tracks tbody td") or "").startswith("#")
        assert (await page.text_content(".timeline h3") or "").startswith("face #")
        assert "smoothed" in " ".join((await page.text_content("#scores-note") or "").split())
        assert "smoothed" in (await page.get_attribute("canvas[data-face]", "aria-label") or "")
        await check_time_axis(page)


# Ink (alpha) per canvas column in a band of rows, and where the time axis and its ticks are.
TIME_AXIS_JS = """
([top, bottom]) => {
  const c = document.querySelector('canvas[data-face]');
  const k = c.width / c.clientWidth;
  const axis = Number(c.dataset.axisY);
  const rows = [Math.round((axis + top) * k), Math.round((bottom - top) * k)];
  const d = c.getContext('2d').getImageData(0, rows[0], c.width, rows[1]).data;
  const columns = new Array(c.clientWidth).fill(0);
  for (let i = 3; i < d.length; i += 4) columns[Math.floor(((i - 3) / 4) % c.width / k)] += d[i] > 64 ? 1 : 0;
  const ticks = c.dataset.ticks.split(' ').map((t) => t.split(':').map(Number));
  return { columns, ticks, height: c.clientHeight - axis };
}
"""


def ink_runs(columns: list[int], min_gap: int = 8) -> int:
    """Separate stretches of inked columns, joined across gaps under `min_gap` (one per label)."""
    runs, last = 0, None
    for x, ink in enumerate(columns):
        if ink:
            if last is None or x - last >= min_gap:
                runs += 1
            last = x
    return runs


async def check_time_axis(page: Any) -> None:
    """More than the two end labels: a tick mark and a label per tick, and a title under them."""
    marks = await page.evaluate(TIME_AXIS_JS, [1, 4])
    ticks = marks["ticks"]
    assert len(ticks) >= 4 and [t for t, _ in ticks] == sorted(t for t, _ in ticks), ticks
    for _t, x in ticks:
        assert max(marks["columns"][round(x) - 1 : round(x) + 2]) > 0, (ticks, x)
    labels = await page.evaluate(TIME_AXIS_JS, [6, 17])
    assert ink_runs(labels["columns"]) == len(ticks), (ticks, labels["columns"])
    title = await page.evaluate(TIME_AXIS_JS, [19, labels["height"]])
    assert ink_runs(title["columns"]) >= 1


ABOUT = ("displays, not the emotion a person feels", "EU AI Act (Art. 5(1)(f))", "medical or safety")


async def test_videos_at_their_own_size_and_the_analyse_link_runs_one(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    analyze_clips.face_clip(tmp_path / "videos" / "on_server.mp4", frames=10)
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        for path in ("/", "/analyze", "/videos"):  # each page says what it reads, and the law on it
            await page.goto(f"{live_server.base_url}{path}")
            about = " ".join((await page.text_content("#about") or "").split())
            assert all(words in about for words in ABOUT) and await page.is_visible("#about"), (path, about)
        # The stream at its own size at least: the server draws its labels for that size.
        await page.wait_for_function("() => document.querySelector('.videos img').naturalWidth > 0", polling=100)
        size = await page.eval_on_selector(
            ".videos img", "img => ({ natural: [img.naturalWidth, img.naturalHeight], shown: [img.width, img.height] })"
        )
        assert size["shown"][0] >= size["natural"][0] and size["shown"][1] >= size["natural"][1], size
        await page.click("a[href='/analyze?video=on_server.mp4']")
        await page.wait_for_function(
            "() => document.querySelector('#job-state').textContent.startsWith('done')", timeout=TIMEOUT_MS
        )
        assert await page.text_content("#job-name") == "on_server.mp4"
        assert await page.is_visible("#csv")


async def test_a_new_upload_never_shows_the_last_jobs_results(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    # The box kept the last job's bar, timeline and CSV link under the next file's name, so a
    # user could download another file's rows as theirs.
    clip = analyze_clips.face_clip(tmp_path / "first.mp4", frames=10)
    text = analyze_clips.not_a_video(tmp_path / "second.mp4")
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        await page.goto(f"{live_server.base_url}/analyze")
        for upload in (clip, text):
            await page.set_input_files("#file", str(upload))
            await page.click("#send")
            await page.wait_for_function(
                "() => /^(done|failed)/.test(document.querySelector('#job-state').textContent)", timeout=TIMEOUT_MS
            )
        assert await page.text_content("#job-name") == "second.mp4"
        assert (await page.text_content("#job-state") or "").startswith("failed")
        assert not await page.is_visible("#csv") and await page.get_attribute("#csv", "href") is None
        assert await page.locator("canvas[data-face]").count() == 0
        assert "No face was seen" not in (await page.text_content("#charts") or "")  # it failed: nothing was read
        assert "not a video" in (await page.text_content("#job-warning") or "")


async def test_the_videos_page_plays_a_few_streams_and_says_why_one_does_not_play(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    # Each stream holds one of the 6 connections a browser opens to a server: with 6 playing, a
    # link on the page (or another tab) waited for ever.
    for i in range(5):
        analyze_clips.face_clip(tmp_path / "videos" / f"clip{i}.mp4", frames=6)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"")
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        await page.goto(f"{live_server.base_url}/videos")
        playing = "() => [...document.querySelectorAll('.videos img')].filter(i => i.getAttribute('src')).length"
        # The first three start: broken.mp4 (first by name) fails and says why, clip0 and clip1 play.
        await page.wait_for_function(
            "() => !document.querySelector('figure[data-name=\"broken.mp4\"] .stream-error').hidden", polling=100
        )
        error = await page.text_content("figure[data-name='broken.mp4'] .stream-error")
        assert "not a video OpenCV can decode" in (error or "")
        assert await page.evaluate(playing) == 2
        for name in ("clip4.mp4", "clip3.mp4"):  # the third plays; the fourth stops the first started
            await page.click(f"figure[data-name='{name}'] .play")
        assert await page.evaluate(playing) == 3
        assert await page.get_attribute("figure[data-name='clip0.mp4'] img", "src") is None
        assert await page.get_attribute("figure[data-name='clip3.mp4'] img", "src") == "/video/clip3.mp4"
        await page.click("a[href='/analyze']", timeout=5000)  # the page's links still go somewhere
        await page.wait_for_url("**/analyze", timeout=5000)
        errors[:] = [e for e in errors if not e.startswith("HTTP 415 for ") or not e.endswith("/video/broken.mp4")]
