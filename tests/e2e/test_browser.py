"""End to end in a real browser: Debian's Chromium, a fake webcam playing a real face, the real
server and model. The page must send frames, get results and draw labelled boxes.

Chromium's fake capture device plays `face_clip` (a y4m made from skimage's astronaut photo)
as the webcam; `--use-fake-ui-for-media-stream` accepts the camera prompt. The page is opened
on http://127.0.0.1:PORT, which browsers treat as a secure context, so getUserMedia works.
Never `playwright install`: we drive the system Chromium; without it the tests skip.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from fer_async.bench.harness import LiveServer
from fer_async.labels import EMOTIONS
from fer_async.server.keys import WEBSOCKETS

from .conftest import RestartableServer

pytestmark = pytest.mark.browser

TIMEOUT_MS = 90_000  # generous: the CPU may be shared with a training run

CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--mute-audio",
]

# True once the page has drawn at least one face, and the overlay really has painted pixels;
# then returns what it saw. Checked in one go, so a redraw in between cannot fool it.
FACES_DRAWN_JS = """
() => {
  const state = window.ferState;
  const canvas = document.getElementById("overlay");
  if (!state || !canvas || state.facesDrawn < 1 || Number(canvas.dataset.faces) < 1) return false;
  if (!canvas.width || !canvas.height) return false;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted++;
  if (painted === 0) return false;
  return {
    painted,
    size: [canvas.width, canvas.height],
    dataFaces: Number(canvas.dataset.faces),
    state: JSON.parse(JSON.stringify(state)),
    label: document.querySelector("#bars li.top")?.dataset.emotion ?? null,
  };
}
"""

STATE_JS = "() => JSON.parse(JSON.stringify(window.ferState))"
NO_VALUE = "\u2013"  # the en dash the page shows where there is no figure

# Bounding box (CSS pixels of the overlay) of everything painted on it: the face box plus its
# label, which sits on the box's top edge; so its left and bottom are the box's.
PAINTED_BOX_JS = """
() => {
  const c = document.getElementById("overlay");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let l = c.width, t = c.height, r = -1, b = -1;
  for (let y = 0; y < c.height; y++) {
    for (let x = 0; x < c.width; x++) {
      if (d[(y * c.width + x) * 4 + 3]) {
        if (x < l) l = x;
        if (x > r) r = x;
        if (y < t) t = y;
        if (y > b) b = y;
      }
    }
  }
  const k = c.width / c.clientWidth;
  return r < 0 ? null : { left: l / k, top: t / k, right: (r + 1) / k, bottom: (b + 1) / k };
}
"""


@contextlib.asynccontextmanager
async def browser_session(chromium: Path, clip: Path) -> AsyncIterator[tuple[Any, list[str]]]:
    """Chromium with `clip` as its webcam, and the list that `open_page` fills with page errors.

    On a clean exit the list must be empty: a test that passed with a JavaScript error failed.
    """
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={clip}"],
            timeout=TIMEOUT_MS,
        )
        try:
            yield browser, errors
        finally:
            await browser.close()
    assert not errors, errors


async def open_page(browser: Any, base_url: str, errors: list[str]) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    # Failed loads are recorded by URL below; a missing favicon is the browser's business, not the page's.
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    page.on(
        "response",
        lambda resp: (
            errors.append(f"HTTP {resp.status} for {resp.url}")
            if resp.status >= 400 and not resp.url.endswith("/favicon.ico")
            else None
        ),
    )
    response = await page.goto(f"{base_url}/")
    assert response is not None and response.status == 200
    assert await page.evaluate("() => window.isSecureContext") is True
    return page


def check_drawn(seen: dict[str, Any], where: str) -> dict[str, Any]:
    state = seen["state"]
    assert state["connected"] is True, where
    assert state["framesSent"] >= 1 and state["resultsReceived"] >= 1, (where, state)
    result = state["lastResult"]
    assert result["type"] == "result" and result["width"] == 640 and result["height"] == 480, (where, result)
    assert 1 <= result["frame"] <= state["framesSent"], (where, result["frame"], state["framesSent"])
    assert result["faces"], (where, result)
    for face in result["faces"]:
        assert face["emotion"] in EMOTIONS, face
        assert set(face["scores"]) == set(EMOTIONS), face
        x, y, w, h = face["box"]
        # The clip's face is ~65 px wide; the box must be a face-sized square inside the frame.
        assert min(x, y) >= 0 and x + w <= 640 and y + h <= 480, face
        assert 30 <= w <= 200 and 30 <= h <= 200, face
    assert seen["painted"] > 0 and seen["dataFaces"] >= 1
    assert seen["label"] in EMOTIONS  # the chart marks the main face's emotion
    return dict(result)


async def check_box_on_face(page: Any, tmp_path: Path) -> None:
    """The drawn box must sit on the face the user sees (the mirrored video), not elsewhere.

    Independent of app.js's arithmetic: OpenCV's Haar cascade finds the face in a screenshot
    of the video (overlay hidden), and that face must match what the overlay painted.
    """
    painted = await page.evaluate(PAINTED_BOX_JS)
    assert painted is not None
    await page.evaluate("() => { document.getElementById('overlay').style.visibility = 'hidden'; }")
    shot = await page.locator("#stage").screenshot(path=str(tmp_path / "video-only.png"))
    await page.evaluate("() => { document.getElementById('overlay').style.visibility = ''; }")
    page_image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert page_image is not None, "the screenshot is not a decodable image"
    grey = cv2.cvtColor(page_image, cv2.COLOR_BGR2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    assert len(faces) >= 1, "no face visible in the page's video"
    fx, fy, fw, fh = (float(v) for v in max(faces, key=lambda f: f[2] * f[3]))
    cx, cy = fx + fw / 2, fy + fh / 2
    assert painted["left"] <= cx <= painted["right"] and painted["top"] <= cy <= painted["bottom"], (painted, faces)
    # Lag of one round trip on a gently swaying face, and two detectors' framing: a third of a face.
    assert abs(painted["left"] - fx) < 0.35 * fw, (painted, (fx, fy, fw, fh))
    assert abs(painted["bottom"] - (fy + fh)) < 0.35 * fh, (painted, (fx, fy, fw, fh))


async def test_webcam_page_draws_labelled_faces(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        assert await page.get_attribute("#overlay", "data-faces") == "0"
        await page.click("#start")
        handle = await page.wait_for_function(FACES_DRAWN_JS, polling=100, timeout=TIMEOUT_MS)
        seen = await handle.json_value()
        await page.screenshot(path=str(tmp_path / "page.png"))
        result = check_drawn(seen, "page")
        await check_box_on_face(page, tmp_path)
        # Keep going: more results arrive for later frames of the same connection.
        first = seen["state"]["resultsReceived"]
        await page.wait_for_function(f"() => window.ferState.resultsReceived >= {first + 3}", polling=100)
        state = await page.evaluate(STATE_JS)
        assert state["lastResult"]["frame"] > result["frame"]
        assert state["errors"] == 0, state["lastError"]
        # Each camera frame went out at most once (the fake camera plays 15 fps; the server is faster).
        assert state["framesResent"] == 0, state
        assert state["frameClock"] == "requestVideoFrameCallback"
        (tmp_path / "state.json").write_text(json.dumps(state, indent=2))
        # Stop releases the camera, closes the socket and clears the overlay.
        await page.click("#stop")
        await page.wait_for_function("() => window.ferState.connected === false", polling=100)
        assert await page.get_attribute("#overlay", "data-faces") == "0"
    print(f"screenshot: {tmp_path / 'page.png'}")


async def test_two_pages_get_their_own_results(
    chromium: Path, face_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    """Two browser contexts (two tabs of two users) at once: each is answered on its own socket."""
    async with browser_session(chromium, face_clip) as (browser, errors):
        pages = [await open_page(browser, live_server.base_url, errors) for _ in range(2)]
        for page in pages:
            await page.click("#start")
        seen = []
        for i, page in enumerate(pages):
            handle = await page.wait_for_function(FACES_DRAWN_JS, polling=100, timeout=TIMEOUT_MS)
            seen.append(await handle.json_value())
            check_drawn(seen[-1], f"page {i}")
            await page.screenshot(path=str(tmp_path / f"page{i}.png"))
        assert len(live_server.app[WEBSOCKETS]) == 2  # two clients, two sockets

        # Stop page 0: its counters freeze while page 1 keeps receiving its own results.
        await pages[0].click("#stop")
        await pages[0].wait_for_function("() => window.ferState.connected === false", polling=100)
        frozen = await pages[0].evaluate(STATE_JS)
        before = await pages[1].evaluate(STATE_JS)
        await pages[1].wait_for_function(
            f"() => window.ferState.resultsReceived >= {before['resultsReceived'] + 3}", polling=100
        )
        after = [await page.evaluate(STATE_JS) for page in pages]
        assert after[0]["resultsReceived"] == frozen["resultsReceived"]
        assert after[0]["framesSent"] == frozen["framesSent"]
        assert after[1]["lastResult"]["frame"] > before["lastResult"]["frame"]
        for state in (frozen, after[1]):
            assert state["resultsReceived"] > 0 and state["framesSent"] > 0
            assert state["lastResult"]["frame"] <= state["framesSent"]
            assert state["errors"] == 0, state["lastError"]
        print(
            "frames sent / results:",
            [(s["framesSent"], s["resultsReceived"], s["lastResult"]["frame"]) for s in (frozen, after[1])],
        )


async def test_placeholder_hides_once_the_camera_runs(chromium: Path, face_clip: Path, live_server: LiveServer) -> None:
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        assert await page.is_visible("#placeholder")
        await page.click("#start")
        await page.wait_for_function("() => window.ferState.resultsReceived > 0", polling=100)
        assert await page.get_attribute("#placeholder", "hidden") is not None  # app.js did its part
        assert not await page.is_visible("#placeholder"), "the placeholder text still covers the video"


async def test_start_placeholder_does_not_wrap(chromium: Path, face_clip: Path, live_server: LiveServer) -> None:
    async with browser_session(chromium, face_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        # "Click", "Start" and "and allow the camera." sit on one line (each was its own grid row).
        tops = await page.evaluate(
            """() => {
              const strong = document.querySelector('#placeholder strong');
              const range = document.createRange();
              const top = (node) => {
                range.selectNodeContents(node);
                return Math.round(range.getClientRects()[0].top);
              };
              return [top(strong.previousSibling), top(strong), top(strong.nextSibling)];
            }"""
        )
        assert len(set(tops)) == 1, tops
        assert await page.evaluate("() => document.querySelector('#placeholder strong').getClientRects().length") == 1


async def test_page_clears_and_says_retrying_while_the_server_is_down(
    chromium: Path, face_clip: Path, restartable_server: RestartableServer
) -> None:
    """Server gone: no stale box, bars or fps stay on screen; the status says it retries; it comes back."""
    async with browser_session(chromium, face_clip) as (browser, errors):
        assert restartable_server.live is not None
        page = await open_page(browser, restartable_server.live.base_url, errors)
        await page.click("#start")
        handle = await page.wait_for_function(FACES_DRAWN_JS, polling=100, timeout=TIMEOUT_MS)
        seen = await handle.json_value()
        face = seen["state"]["lastResult"]["faces"][0]
        assert isinstance(face["id"], int) and set(face["raw_scores"]) == set(EMOTIONS)
        assert await page.text_content("#main-face") == f"#{face['id']}"
        assert await page.text_content("#detector") in ("yunet", "haar")

        await restartable_server.stop()
        await page.wait_for_function("() => window.ferState.connected === false", polling=100)
        await page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('disconnected — retrying')", polling=100
        )
        assert await page.get_attribute("#overlay", "data-faces") == "0"
        assert await page.evaluate(PAINTED_BOX_JS) is None  # nothing left on the overlay
        values = await page.eval_on_selector_all("#bars .value", "els => els.map(e => e.textContent)")
        assert values and set(values) == {NO_VALUE}, values
        assert await page.evaluate("() => document.querySelectorAll('#bars li.top').length") == 0
        assert await page.text_content("#fps") == NO_VALUE
        assert await page.text_content("#main-face") == ""

        # Back up: the page reconnects by itself and draws faces again.
        await restartable_server.start()
        await page.wait_for_function(FACES_DRAWN_JS, polling=100, timeout=TIMEOUT_MS)
        state = await page.evaluate(STATE_JS)
        assert state["connected"] is True and state["framesResent"] == 0, state
        # The refused reconnects while the server was down are the page's expected traffic, not errors.
        errors[:] = [e for e in errors if "ERR_CONNECTION_REFUSED" not in e and "WebSocket" not in e]
