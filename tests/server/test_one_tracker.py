"""One tracker factory: the WebSocket, an MJPEG channel, the CLI, the jobs and the API label the same frames alike.

The model here is a small fake whose scores follow the face's brightness, so the frames are
built to make the hysteresis decide: a "weak" frame has sad ahead of happy by 0.05, less than
the 0.15 margin. With `--smoothing-ms 0` a tracker that keeps the margin goes on showing happy
there; one that drops it (as the CLI and the jobs once did) shows sad. Everything else is real:
detector, sockets, OpenCV decoding, the batcher, the job's CSV.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fer_async.analyze import analyze_video
from fer_async.analyze.__main__ import main
from fer_async.labels import EMOTIONS
from fer_async.synthetic import astronaut_bgr, compose_frame, jpeg, write_video
from fer_async.tracker import TrackedFace, Tracker

from .helpers import MakeClient, connect, reply_for, upload_form, wait_for_job

CLIP = "blocks.mp4"
CLIP_FPS = 5.0  # slow enough that the MJPEG channel analyses every frame on a busy machine
BLOCK = 3  # frames per brightness block
# Brightness offsets: a bright face reads "happy" strongly, a mid one "sad" by a hair, a dark one "sad" strongly.
BRIGHT, MID, DARK = 70, 0, -70
BLOCKS = (BRIGHT, MID, DARK, BRIGHT, MID)
# Face crops average ~210 (bright), ~150 (mid) and ~85 (dark) with either detector.
BRIGHT_ABOVE, DARK_BELOW = 180.0, 115.0
MARGIN_KEPT = ["happy"] * 6 + ["sad"] * 3 + ["happy"] * 6
MARGIN_DROPPED = ["happy"] * 3 + ["sad"] * 6 + ["happy"] * 3 + ["sad"] * 3


def scores(**named: float) -> np.ndarray:
    rest = (1.0 - sum(named.values())) / (len(EMOTIONS) - len(named))
    return np.array([named.get(name, rest) for name in EMOTIONS], np.float32)


class BrightnessModel:
    """Scores from the mean of each 48x48 face crop (see the module docstring)."""

    def predict(self, faces: np.ndarray) -> np.ndarray:
        out = []
        for face in faces:
            mean = float(face.mean())
            if mean > BRIGHT_ABOVE:
                out.append(scores(happy=0.8))
            elif mean < DARK_BELOW:
                out.append(scores(sad=0.8))
            else:
                out.append(scores(sad=0.45, happy=0.40))
        return np.stack(out)


def block_frames() -> list[np.ndarray]:
    base = compose_frame(astronaut_bgr(), 120, 40).astype(np.int16)
    return [np.clip(base + offset, 0, 255).astype(np.uint8) for offset in BLOCKS for _ in range(BLOCK)]


@pytest.fixture
def tracked(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, list[str]]]:
    """The labels every Tracker hands out, per Tracker, in order (the real Tracker, watched)."""
    seen: dict[int, list[str]] = {}
    update = Tracker.update

    def watched(self: Tracker, faces: Any, now_s: float) -> tuple[TrackedFace, ...]:
        result = update(self, faces, now_s)
        seen.setdefault(id(self), []).extend(face.emotion for face in result)
        return result

    monkeypatch.setattr(Tracker, "update", watched)
    yield seen


def runs(labels: list[str]) -> list[str]:
    return [label for label, _ in groupby(labels)]


async def test_every_path_builds_its_tracker_from_the_settings(
    make_client: MakeClient, video_dir: Path, tmp_path: Path, tracked: dict[int, list[str]], monkeypatch: Any
) -> None:
    assert runs(MARGIN_KEPT) != runs(MARGIN_DROPPED)  # the frames do tell the two apart
    frames = block_frames()
    clip = write_video(video_dir / CLIP, frames, CLIP_FPS)
    model = BrightnessModel()
    client = await make_client(model=model, smoothing_ms=0.0)

    # The WebSocket: each frame as the page sends it (a JPEG), one in flight.
    ws = await connect(client)
    live = []
    for number, frame in enumerate(frames, start=1):
        await ws.send_bytes(jpeg(frame, 90))
        (face,) = (await reply_for(ws, number))["faces"]
        live.append(face["emotion"])
    await ws.close()
    assert live == MARGIN_KEPT

    # The MJPEG channel: decoded by the server at the clip's pace; its tracker draws the labels.
    tracked.clear()
    response = await client.get(f"/video/{CLIP}?loop=0")
    assert response.status == 200
    await response.read()  # the stream ends with the file
    (channel,) = tracked.values()
    assert len(channel) >= len(BLOCKS)
    assert runs(channel) == runs(MARGIN_KEPT), channel

    # A job: the uploaded clip through the shared batcher, rows from its CSV.
    started = await client.post("/api/analyses", data=upload_form(clip))
    job, _ = await wait_for_job(client, (await started.json())["url"])
    assert job["state"] == "done", job
    rows = list(csv.DictReader(io.StringIO(await (await client.get(job["csv_url"])).text())))
    assert [row["emotion"] for row in rows] == MARGIN_KEPT

    # The Python API, with the server's own Analyzer.
    from fer_async.server.keys import ANALYZER

    analyzer = client.app[ANALYZER]
    api = await asyncio.to_thread(lambda: list(analyze_video(clip, analyzer=analyzer, smoothing_ms=0)))
    assert [row["emotion"] for row in api] == MARGIN_KEPT

    # The CLI, as a user runs it (its own Analyzer and detector, the same fake model).
    monkeypatch.setattr("fer_async.loading.load_model", lambda settings: model)
    out = tmp_path / "cli.csv"
    assert main([str(clip), "--out", str(out), "--smoothing-ms", "0"]) == 0  # on this thread: it takes SIGINT
    with out.open(newline="") as f:
        assert [row["emotion"] for row in csv.DictReader(f)] == MARGIN_KEPT
