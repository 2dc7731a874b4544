"""A server that stops answering, in Chromium: the process is frozen with SIGSTOP and resumed
with SIGCONT, as in issue 23 (5 s and 15 s). The socket stays open all along, so only the
missing replies can tell the page.

While frozen the page must say the server is not answering, take the boxes, labels and bars
away, show 0 fps (results, not camera frames) and no latency. Resumed, it must draw again, and
the same face in the same place must keep its track id (a track ages by the frames processed
for it, not by wall-clock time).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerProcess
from .test_browser import FACES_DRAWN_JS, NO_VALUE, PAINTED_BOX_JS, STATE_JS, TIMEOUT_MS, browser_session, open_page

pytestmark = pytest.mark.browser

PAUSES_S = (5.0, 15.0)

NOT_ANSWERING_JS = """
() => window.ferState.connected === true && window.ferState.answering === false
  && document.getElementById('status').textContent.includes('not answering')
  && document.getElementById('overlay').dataset.faces === '0'
"""
ANSWERING_JS = """
() => window.ferState.answering === true
  && document.getElementById('status').textContent === 'connected'
"""


async def check_nothing_stale_is_shown(page: Any) -> None:
    assert await page.evaluate(PAINTED_BOX_JS) is None  # no box, no label left on the overlay
    values = await page.eval_on_selector_all("#bars .value", "els => els.map(e => e.textContent)")
    assert values and set(values) == {NO_VALUE}, values
    assert await page.evaluate("() => document.querySelectorAll('#bars li.top').length") == 0
    assert await page.text_content("#main-face") == ""
    assert await page.get_attribute("#stage", "class") == "stage offline"  # the picture is dimmed


async def test_page_notices_a_frozen_server_and_the_face_keeps_its_id(
    chromium: Path, face_clip: Path, own_process_server: ServerProcess
) -> None:
    pid = own_process_server.process.pid
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, own_process_server.base_url, errors)
        await page.click("#start")
        seen = await (await page.wait_for_function(FACES_DRAWN_JS, polling=100, timeout=TIMEOUT_MS)).json_value()
        (face,) = seen["state"]["lastResult"]["faces"]
        for pause_s in PAUSES_S:
            await page.wait_for_function(ANSWERING_JS, polling=100)
            await page.wait_for_function("() => Number(document.getElementById('fps').textContent) > 0", polling=100)
            os.kill(pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                await page.wait_for_function(NOT_ANSWERING_JS, polling=100)
                await check_nothing_stale_is_shown(page)
                # No result came in the last second: 0 fps and no latency, refreshed by the page itself.
                await page.wait_for_function(
                    f"() => document.getElementById('fps').textContent === '0'"
                    f" && document.getElementById('latency').textContent === '{NO_VALUE}'",
                    polling=100,
                )
                # The page keeps offering frames (one every few seconds) and is not fooled by them.
                sent = (await page.evaluate(STATE_JS))["framesSent"]
                await page.wait_for_function(f"() => window.ferState.framesSent > {sent}", polling=100)
                await asyncio.sleep(max(0.0, pause_s - (time.monotonic() - frozen_at)))
                assert await page.evaluate(NOT_ANSWERING_JS), await page.text_content("#status")
                await check_nothing_stale_is_shown(page)
                assert await page.text_content("#fps") == "0"
            finally:
                os.kill(pid, signal.SIGCONT)
            # Resumed: the page says so and draws again, and the face is the same track.
            await page.wait_for_function(ANSWERING_JS, polling=100)
            after = await (await page.wait_for_function(FACES_DRAWN_JS, polling=100)).json_value()
            (again,) = after["state"]["lastResult"]["faces"]
            assert again["id"] == face["id"], (pause_s, face, again)
            assert after["state"]["connected"] is True and after["state"]["framesResent"] == 0
        state = await page.evaluate(STATE_JS)
        assert state["errors"] == 0, state["lastError"]
