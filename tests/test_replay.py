"""fer_async.replay's figures on hand-made replies (the real-clip runs are in tests/server/test_clips.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fer_async.labels import EMOTIONS
from fer_async.replay import Clip, Reply, _onset, load_clip, summarise


def scores(label: str) -> dict[str, float]:
    return {name: (0.94 if name == label else 0.01) for name in EMOTIONS}


def reply(index: int, label: str | None, *, shown: str | None = None, track: int = 1) -> Reply:
    if label is None:
        return Reply(index, index / 10, index / 10 + 0.05, ())
    face = {"id": track, "box": [0, 0, 50, 50], "emotion": shown or label, "scores": scores(shown or label)}
    face["raw_scores"] = scores(label)
    return Reply(index, index / 10, index / 10 + 0.05, (face,))


def test_summary_counts_changes_short_runs_ids_and_onset() -> None:
    clip = Clip("c.mp4", 10.0, tuple(b"x" for _ in range(40)))  # 4 s
    labels = ["neutral"] * 10 + ["sad"] * 2 + ["neutral"] * 8 + ["happy"] * 20  # a 0.2 s blip of sad
    replies = [reply(i, raw, shown="happy" if i >= 23 else "neutral") for i, raw in enumerate(labels)]
    replies[5] = reply(5, None)
    s = summarise(replies, clip, onset_frame=20, onset_label="happy")
    assert (s["frames"], s["frames_answered"], s["frames_with_faces"], s["boxes"]) == (40, 40, 39, 39)
    assert s["track_ids"] == 1 and s["main_id_share"] == 1.0
    assert s["raw"]["label_changes"] == 3 and s["raw"]["short_label_runs"] == 1
    assert s["raw"]["onset_frame_delay_s"] == 0.0
    assert s["server"]["label_changes"] == 1 and s["server"]["short_label_runs"] == 0
    assert s["server"]["label_changes_per_s"] == 0.25
    assert s["server"]["onset_frame_delay_s"] == pytest.approx(0.3)
    assert s["server"]["onset_seen_delay_s"] == pytest.approx(0.35)
    assert s["round_trip_ms_p50"] == pytest.approx(50.0)


def test_main_id_share_counts_frames_of_other_tracks() -> None:
    clip = Clip("c.mp4", 10.0, tuple(b"x" for _ in range(10)))
    replies = [reply(i, "neutral", track=1 if i < 8 else 2) for i in range(10)]
    s = summarise(replies, clip)
    assert s["track_ids"] == 2 and s["main_id_share"] == 0.8


def test_onset_argument() -> None:
    assert _onset("single_face.mp4=18:happy") == ("single_face.mp4", 18, "happy")
    for bad in ("x.mp4=18", "x.mp4=a:happy", "=3:happy", "x.mp4=3:glad"):
        with pytest.raises(argparse.ArgumentTypeError):
            _onset(bad)


def test_load_clip_refuses_what_is_not_a_video(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(ValueError):
        load_clip(junk)
