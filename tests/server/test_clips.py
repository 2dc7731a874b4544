"""What a person sees on real clips (../shared/data/videos), through the real app's /ws, played by fer_async.replay.

Properties only; the figures (latency, onset delay, changes per second) are in docs/benchmarks.md, measured
with `python -m fer_async.replay` (a speed figure is never a test assertion).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fer_async.replay import Clip, Reply, load_clip, play, retrack, summarise

from .helpers import MakeClient, connect

VIDEOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videos"
FACE_CLIPS = ("single_face.mp4", "face_noface.mov", "noface_face.mov")


def clip(name: str) -> Clip:
    path = VIDEOS / name
    if not path.is_file():
        pytest.skip(f"real clip not found: {path}")
    return load_clip(path)


async def replies_of(make_client: MakeClient, the_clip: Clip, *, realtime: bool, **settings: object) -> list[Reply]:
    client = await make_client(**settings)
    ws = await connect(client)
    try:
        return await play(ws, the_clip, realtime=realtime)
    finally:
        await ws.close()


async def test_no_box_on_a_clip_without_faces(make_client: MakeClient) -> None:
    no_face = clip("no_face.mp4")
    replies = await replies_of(make_client, no_face, realtime=True)
    assert len(replies) >= len(no_face.jpegs) // 4  # played, not skipped wholesale
    assert summarise(replies, no_face)["boxes"] == 0


async def test_one_track_id_for_a_single_face_in_real_time(make_client: MakeClient) -> None:
    single = clip("single_face.mp4")
    summary = summarise(await replies_of(make_client, single, realtime=True), single)
    assert summary["frames_with_faces"] >= 0.95 * summary["frames_answered"], summary
    assert summary["track_ids"] == 1 and summary["main_id_share"] == 1.0, summary


def changes(labels: list[str | None]) -> int:
    shown = [label for label in labels if label is not None]
    return sum(1 for a, b in itertools.pairwise(shown) if a != b)


async def test_smoothing_reduces_label_changes_against_smoothing_0_on_the_same_frames(make_client: MakeClient) -> None:
    """Every frame of the face clips once, on the clip's clock: default tracker options against smoothing 0."""
    smoothed_total = unsmoothed_total = 0
    for name in FACE_CLIPS:
        the_clip = clip(name)
        replies = await replies_of(make_client, the_clip, realtime=False)
        assert [r.index for r in replies] == list(range(len(the_clip.jpegs)))
        smoothed = [faces[0]["emotion"] if faces else None for faces in retrack(replies, the_clip.fps)]
        off = [faces[0]["emotion"] if faces else None for faces in retrack(replies, the_clip.fps, smoothing_ms=0)]
        assert changes(smoothed) <= changes(off), name
        smoothed_total += changes(smoothed)
        unsmoothed_total += changes(off)
        # What the server itself sent carries both: raw_scores per frame, and one id for the one face.
        assert {f["id"] for r in replies for f in r.faces} == {1}, name
    assert smoothed_total < unsmoothed_total, (smoothed_total, unsmoothed_total)
