"""The README's screenshot: the webcam page in Chromium on a real face, made by this test.

A real clip (../shared/data/videos/single_face.mp4: a man who smiles) is the fake webcam. The
test waits until the page draws the smiling face with its track id and label, then takes the
screenshot of the page's main area and checks it shows what it should. With
`FER_WRITE_SCREENSHOT=1` it also writes the picture to docs/img/webcam.png, the README's image:

    FER_WRITE_SCREENSHOT=1 python -m pytest tests/e2e/test_screenshot.py

Without the clip it skips (a clone without ../shared): the committed picture stays as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_async.bench.harness import LiveServer
from fer_async.synthetic import write_y4m

from .test_browser import FACES_DRAWN_JS, TIMEOUT_MS, browser_session, open_page

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO.parent / "shared" / "data" / "videos" / "single_face.mp4"
SCREENSHOT = REPO / "docs" / "img" / "webcam.png"
# The smile, as the page shows it: the steady label of the main face.
SMILING_JS = f"""
() => {{
  const seen = ({FACES_DRAWN_JS})();
  const face = seen && seen.state.lastResult.faces[0];
  return face && face.emotion === "happy" && face.id !== undefined ? seen : false;
}}
"""


@pytest.fixture(scope="module")
def real_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CLIP.is_file():
        pytest.skip(f"the real clip is not here ({CLIP})")
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    fps = round(capture.get(cv2.CAP_PROP_FPS) or 30) if frames else 30
    return write_y4m(tmp_path_factory.mktemp("real") / "single_face.y4m", frames, fps)


async def test_the_page_on_a_real_face_makes_the_readmes_screenshot(
    chromium: Path, real_clip: Path, live_server: LiveServer, tmp_path: Path
) -> None:
    async with browser_session(chromium, real_clip) as (browser, errors):
        page = await open_page(browser, live_server.base_url, errors)
        await page.click("#start")
        # The clip loops every 2.4 s and smiles for about half of it.
        await page.wait_for_function(SMILING_JS, polling=50, timeout=TIMEOUT_MS)
        shot = await page.locator("main").screenshot(path=str(tmp_path / "webcam.png"))
        await page.click("#stop")
    image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] >= 800, "the screenshot shows the page's main area"
    if os.environ.get("FER_WRITE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)
    assert SCREENSHOT.is_file(), f"{SCREENSHOT} is missing: run with FER_WRITE_SCREENSHOT=1"
