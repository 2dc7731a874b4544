"""Face tracks and the detector choice through the real app: ids and smoothed scores on /ws, none on /api/predict."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fer_async.labels import EMOTIONS
from fer_async.schedule import DETECT_EVERY
from fer_async.server.keys import ANALYZER, DETECTOR_NAME, METRICS

from .helpers import CLIP_NAME, REPLY_TIMEOUT_S, MakeClient, connect, make_frame_jpeg, reply_for
from .test_mjpeg import read_part

YUNET_MODEL = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "face_detection_yunet.onnx"


async def test_ws_faces_carry_a_stable_id_smoothed_and_raw_scores(
    make_client: MakeClient, astronaut_bgr: np.ndarray
) -> None:
    client = await make_client(smoothing_ms=500.0)
    ws = await connect(client)
    replies = []
    for n in range(1, 6):  # the face drifts a little from frame to frame, as in a webcam
        await ws.send_bytes(make_frame_jpeg(astronaut_bgr, 100 + 6 * n, 60, 330))
        replies.append(await reply_for(ws, n))
        await asyncio.sleep(0.05)
    faces = [reply["faces"] for reply in replies]
    assert all(len(f) == 1 for f in faces), faces
    assert {f[0]["id"] for f in faces} == {1}
    # Frames 2-5 were searched around the face of the frame before, but for the schedule's full
    # detections (its period shifted by the connection's number): YuNet; Haar searches whole frames.
    regions = client.app[METRICS].registry.get_sample_value("fer_detections_total", {"search": "regions"})
    assert regions is not None
    if client.app[DETECTOR_NAME] == "yunet":
        assert 4 - -(-4 // DETECT_EVERY) <= regions <= 4 - 4 // DETECT_EVERY, regions
    else:
        assert regions == 0
    first, later = faces[0][0], faces[-1][0]
    assert first["scores"] == first["raw_scores"]  # a new track starts at its first frame's scores
    assert list(later["raw_scores"]) == list(EMOTIONS)
    # A second connection has tracks of its own: its first face is id 1 again.
    other = await connect(client)
    await other.send_bytes(make_frame_jpeg(astronaut_bgr, 100, 60, 330))
    assert (await reply_for(other, 1))["faces"][0]["id"] == 1
    await ws.close()
    await other.close()


async def test_smoothing_off_sends_raw_scores(make_client: MakeClient, astronaut_bgr: np.ndarray) -> None:
    client = await make_client(smoothing_ms=0.0)
    ws = await connect(client)
    for n in range(1, 4):
        await ws.send_bytes(make_frame_jpeg(astronaut_bgr, 100 + 10 * n, 60, 300 + 10 * n))
        (face,) = (await reply_for(ws, n))["faces"]
        assert face["scores"] == face["raw_scores"] and face["id"] == 1
    await ws.close()


async def test_predict_stays_untracked(make_client: MakeClient, face_jpeg: bytes) -> None:
    client = await make_client()
    for _ in range(2):
        body = await (await client.post("/api/predict", data=face_jpeg, headers={"Content-Type": "image/jpeg"})).json()
        (face,) = body["faces"]
        assert "id" not in face and "raw_scores" not in face


async def test_healthz_and_page_name_the_running_detector(make_client: MakeClient) -> None:
    client = await make_client()
    expected = "yunet" if YUNET_MODEL.is_file() else "haar"  # tests/conftest.py caches ../shared's copy
    assert (await (await client.get("/healthz")).json())["detector"] == expected
    assert f'id="detector">{expected}<' in await (await client.get("/")).text()
    assert type(client.app[ANALYZER].detector).__name__ == ("YuNetDetector" if expected == "yunet" else "HaarDetector")
    haar = await make_client(detector="haar")
    assert (await (await haar.get("/healthz")).json())["detector"] == "haar"


async def test_yunet_offline_and_uncached_falls_back_to_haar(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # the download URL is refused (conftest)
    client = await make_client(detector="yunet")
    assert (await (await client.get("/healthz")).json())["detector"] == "haar"
    warnings = [r.getMessage() for r in caplog.records if r.name == "fer_async.detector_model"]
    assert len(warnings) == 1 and "--detector-model" in warnings[0]


async def test_explicit_yunet_model_is_used(make_client: MakeClient, yunet_model: Path) -> None:
    client = await make_client(detector="yunet", detector_model=yunet_model)
    assert (await (await client.get("/healthz")).json())["detector"] == "yunet"


class SlowModel:
    """The real model, taking at least `delay_s` per call: analysis slower than the video's fps."""

    def __init__(self, model: Any, delay_s: float) -> None:
        self.model = model
        self.device = model.device
        self.delay_s = delay_s

    def predict(self, faces: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.asarray(self.model.predict(faces))


async def test_video_frames_skipped_by_slow_analysis_are_counted(make_client: MakeClient, real_model: Any) -> None:
    client = await make_client(model=SlowModel(real_model, 0.3))  # the clip runs at 12 fps: 83 ms a frame
    resp = await client.get(f"/video/{CLIP_NAME}")
    for _ in range(4):
        assert await asyncio.wait_for(read_part(resp.content), REPLY_TIMEOUT_S) is not None
    resp.close()
    dropped = client.app[METRICS].registry.get_sample_value("fer_frames_dropped_total", {"source": "video"})
    assert dropped is not None and dropped >= 3, dropped
