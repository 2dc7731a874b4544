"""The webcam page as a person uses it, in Chromium on the real server: what a screen reader is
told and when, where keyboard focus goes, and the colours it draws in (issue 23)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from testsupport import eventually

from fer_async.bench.harness import LiveServer
from fer_async.labels import EMOTION_COLOURS

from .test_browser import FACES_DRAWN_JS, NO_VALUE, STATE_JS, browser_session, open_page

pytestmark = pytest.mark.browser

# Counts every write to the figures and the main face's live text from now on (page clock).
OBSERVE_JS = """
() => {
  window.writes = { fps: 0, latency: 0, label: 0, since: performance.now() };
  for (const [id, key] of [["fps", "fps"], ["latency", "latency"], ["main-label", "label"]]) {
    new MutationObserver((records) => { window.writes[key] += records.length; })
      .observe(document.getElementById(id), { childList: true, characterData: true, subtree: true });
  }
}
"""
# A live region announces its changes: the element itself or anything around it.
IN_LIVE_REGION_JS = """
(el) => Boolean(el.closest('[aria-live]:not([aria-live="off"]), [role="status"], [role="log"], [role="alert"], output'))
"""
# The most frequent opaque colour on the overlay (the box and its label's fill) and the face's label.
OVERLAY_COLOUR_JS = """
() => {
  const c = document.getElementById("overlay");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const counts = new Map();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] !== 255 || d[i] + d[i + 1] + d[i + 2] === 0) continue;
    const key = `${d[i]},${d[i + 1]},${d[i + 2]}`;
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
  const faces = window.ferState.lastResult.faces;
  return { rgb: top ? top[0].split(",").map(Number) : null, emotions: faces.map((f) => f.emotion) };
}
"""


def main_face_runs(results: list[dict[str, Any]]) -> int:
    """How often the main (largest) face or its steady label changed, counting the first."""
    keys = []
    for result in results:
        faces = sorted(result["faces"], key=lambda f: -f["box"][2] * f["box"][3])
        keys.append((faces[0]["id"], faces[0]["emotion"]) if faces else None)
    return sum(1 for i, key in enumerate(keys) if i == 0 or key != keys[i - 1])


async def test_webcam_page_for_keyboard_and_screen_reader(
    chromium: Path, face_clip: Path, live_server: LiveServer
) -> None:
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        results: list[dict[str, Any]] = []

        def on_socket(ws: Any) -> None:
            def on_frame(payload: str | bytes) -> None:
                if isinstance(payload, str) and (msg := json.loads(payload))["type"] == "result":
                    results.append(msg)

            ws.on("framereceived", on_frame)

        page.on("websocket", on_socket)
        for figure in ("#fps", "#latency"):
            assert not await page.eval_on_selector(figure, IN_LIVE_REGION_JS), figure
        assert await page.get_attribute("#main-label", "aria-live") == "polite"
        await page.evaluate(OBSERVE_JS)

        await page.click("#start")
        await page.wait_for_function("() => document.activeElement?.id === 'stop'", polling=100)
        await page.wait_for_function(FACES_DRAWN_JS, polling=100)
        await page.wait_for_function("() => window.ferState.resultsReceived >= 40", polling=100)
        seen = await page.evaluate(
            "() => ({ writes: window.writes, elapsed: performance.now() - window.writes.since,"
            " state: JSON.parse(JSON.stringify(window.ferState)),"
            " label: document.getElementById('main-label').textContent })"
        )
        # The figures are rewritten once a second, not per result.
        for key in ("fps", "latency"):
            assert seen["writes"][key] <= seen["elapsed"] / 1000 + 2, seen
        # The live text changed only when the main face or its steady label did, and says it.
        received = seen["state"]["resultsReceived"]
        await eventually(lambda: len(results) >= received, what="the socket's results reached the test")
        assert 1 <= seen["writes"]["label"] <= main_face_runs(results[:received]), seen["writes"]
        face = max(seen["state"]["lastResult"]["faces"], key=lambda f: f["box"][2] * f["box"][3])
        assert seen["label"].startswith(f"#{face['id']} {face['emotion']} "), (seen["label"], face)
        assert seen["label"].endswith("%")
        # The box is drawn in the server's colour for its emotion (fer_async/labels.py, one table).
        drawn = await page.evaluate(OVERLAY_COLOUR_JS)
        assert drawn["rgb"] in [list(EMOTION_COLOURS[e]) for e in drawn["emotions"]], drawn

        await page.click("#stop")
        await page.wait_for_function("() => window.ferState.connected === false", polling=100)
        assert await page.evaluate("() => document.activeElement?.id") == "start"
        assert await page.text_content("#faces-count") == "no faces yet"
        assert await page.text_content("#main-label") == ""
        assert await page.text_content("#fps") == NO_VALUE and await page.text_content("#latency") == NO_VALUE
        state = await page.evaluate(STATE_JS)
        assert state["errors"] == 0, state["lastError"]
