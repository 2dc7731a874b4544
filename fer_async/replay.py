"""Play a video file through a real server's `/ws` in real time, as the webcam page does, and
measure what a person watching would see.

    python -m fer_async.replay ../shared/data/videos/single_face.mp4 --onset single_face.mp4=18:happy
    python -m fer_async.replay ../shared/data/videos/*.mp4 --server-arg=--smoothing-ms=0
    python -m fer_async.replay CLIP --url ws://127.0.0.1:8080/ws      # a server that is already running

Without `--url` it starts `python -m fer_async` on a free port of 127.0.0.1 (with the
`--server-arg`s, read beforehand as the server reads them, FER_* variables included) and stops
it afterwards. The clip's frames are shrunk to 640 px wide and
JPEG-encoded beforehand (quality 80, like the page), then played on the clip's own clock:
one frame in flight, and when a reply comes the frame due NOW is sent, so analysis slower than
the clip skips frames exactly as a live camera would, and none is sent twice.

Per clip it prints the faces found per frame, the boxes drawn (any box on a clip without faces
is a false detection), for the largest face: label changes per second, the share of frames
carrying its main track id, the label runs shorter than half a second (flicker), the delay
from a clip's `--onset` frame to the first frame shown with the onset's label; the round trip;
and how often the server searched the whole frame for faces (from its /metrics: a server that
other clients also use counts theirs too). The same figures for the raw per-frame labels of
the SAME replies (argmax of `raw_scores`) and for the tracker re-run on them with
`--smoothing-ms 0` (and the server's `--label-margin`; with `--url`, FER_LABEL_MARGIN or its
default) show what smoothing buys and what it costs in latency. `--sweep` re-runs the tracker
on every frame's raw scores over a grid of options (how the defaults were chosen). Ends with
one line of JSON per clip.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import cv2

from fer_async.bench.report import detection_figures, format_detection, search_counts
from fer_async.config import Settings
from fer_async.labels import EMOTIONS, Face
from fer_async.tracker import Tracker
from fer_async.tracker_defaults import DEFAULT_SWITCH_MARGIN
from fer_async.video import DEFAULT_FPS, shrink_to_width

logger = logging.getLogger(__name__)

PROG = "python -m fer_async.replay"
FLICKER_S = 0.5
MAX_WIDTH = 640  # as the MJPEG reader and the page shrink frames
JPEG_QUALITY = 80
REPLY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Clip:
    name: str
    fps: float
    jpegs: tuple[bytes, ...]

    @property
    def duration_s(self) -> float:
        return len(self.jpegs) / self.fps


@dataclass(frozen=True)
class Reply:
    index: int  # the clip frame it answers
    sent_s: float  # since the clip started playing
    received_s: float
    faces: tuple[dict[str, Any], ...]  # as in the /ws result, largest first


def load_clip(path: Path, *, max_width: int = MAX_WIDTH, quality: int = JPEG_QUALITY) -> Clip:
    """Every decodable frame of `path`, shrunk and JPEG-encoded; raises ValueError if none."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path}")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        jpegs = []
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            ok, buffer = cv2.imencode(".jpg", shrink_to_width(frame, max_width), [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                jpegs.append(bytes(buffer.tobytes()))
    finally:
        capture.release()
    if not jpegs:
        raise ValueError(f"no frames in {path}")
    return Clip(path.name, fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS, tuple(jpegs))


async def _reply_for(ws: aiohttp.ClientWebSocketResponse, frame_id: int) -> dict[str, Any] | None:
    while True:
        msg = await ws.receive(timeout=REPLY_TIMEOUT_S)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"the server closed the socket ({msg.type.name} {msg.data!r})")
        reply = json.loads(msg.data)
        if reply.get("frame") != frame_id:
            continue
        if reply["type"] == "result":
            return dict(reply)
        if reply["type"] in ("error", "dropped"):
            logger.warning("frame %d: %s", frame_id, reply)
            return None


async def play(ws: aiohttp.ClientWebSocketResponse, clip: Clip, *, realtime: bool = True) -> list[Reply]:
    """Play `clip` on its own clock through an open /ws (hello already read); one reply per frame sent.

    realtime=False sends every frame, each as soon as the last one is answered (for sweeps).
    """
    replies: list[Reply] = []
    started = time.monotonic()
    last_sent = -1
    while True:
        now = time.monotonic() - started
        due = min(int(now * clip.fps), len(clip.jpegs) - 1) if realtime else min(last_sent + 1, len(clip.jpegs) - 1)
        if due == last_sent:
            if due == len(clip.jpegs) - 1:
                break
            await asyncio.sleep((due + 1) / clip.fps - now)
            continue
        await ws.send_str(json.dumps({"type": "frame", "id": due}))
        await ws.send_bytes(clip.jpegs[due])
        last_sent = due
        reply = await _reply_for(ws, due)
        if reply is not None:
            faces = sorted(reply["faces"], key=lambda f: -f["box"][2] * f["box"][3])
            replies.append(Reply(due, now, time.monotonic() - started, tuple(faces)))
    return replies


def _scores(named: dict[str, float]) -> tuple[float, ...]:
    return tuple(float(named[name]) for name in EMOTIONS)


def retrack(replies: Sequence[Reply], fps: float, **tracker_options: Any) -> list[list[dict[str, Any]]]:
    """The faces of the same replies through a Tracker with other options, on the raw scores, clip time."""
    tracker = Tracker(**tracker_options)
    out = []
    for reply in replies:
        faces = [Face(tuple(f["box"]), _scores(f["raw_scores"])) for f in reply.faces]
        out.append([t.to_json() for t in tracker.update(faces, reply.index / fps)])
    return out


def _label_figures(
    labels: Sequence[str | None], replies: Sequence[Reply], clip: Clip, onset_frame: int | None, onset_label: str
) -> dict[str, Any]:
    """Changes per second of the largest face's label, and the delay to `onset_label` after `onset_frame`."""
    shown = [(r.index, label) for r, label in zip(replies, labels, strict=True) if label is not None]
    changes = sum(1 for (_, a), (_, b) in pairwise(shown) if a != b)
    # Runs of one label between two changes that lasted under FLICKER_S of clip time: a label
    # a viewer could hardly read before it went again.
    starts = [i for i, ((_, a), (_, b)) in enumerate(pairwise(shown), start=1) if a != b]
    short = sum(1 for s, e in pairwise(starts) if (shown[e][0] - shown[s][0]) / clip.fps < FLICKER_S)
    figures: dict[str, Any] = {
        "label_changes": changes,
        "label_changes_per_s": round(changes / clip.duration_s, 3),
        "short_label_runs": short,
    }
    if onset_frame is not None:
        hit = next(
            (r for r, label in zip(replies, labels, strict=True) if r.index >= onset_frame and label == onset_label),
            None,
        )
        onset_s = onset_frame / clip.fps
        figures["onset_frame_delay_s"] = None if hit is None else round(hit.index / clip.fps - onset_s, 3)
        figures["onset_seen_delay_s"] = None if hit is None else round(hit.received_s - onset_s, 3)
    return figures


def summarise(
    replies: Sequence[Reply],
    clip: Clip,
    *,
    onset_frame: int | None = None,
    onset_label: str = "happy",
    label_margin: float = DEFAULT_SWITCH_MARGIN,
) -> dict[str, Any]:
    answered = len(replies)
    with_faces = [r for r in replies if r.faces]
    ids = Counter(r.faces[0]["id"] for r in with_faces)
    main_count = ids.most_common(1)[0][1] if ids else 0
    round_trips = sorted((r.received_s - r.sent_s) * 1000 for r in replies)
    summary: dict[str, Any] = {
        "clip": clip.name,
        "fps": round(clip.fps, 2),
        "frames": len(clip.jpegs),
        "frames_answered": answered,
        "frames_with_faces": len(with_faces),
        "faces_per_frame": round(sum(len(r.faces) for r in replies) / answered, 3) if answered else None,
        "boxes": sum(len(r.faces) for r in replies),
        "track_ids": len({f["id"] for r in replies for f in r.faces}),
        "main_id_share": round(main_count / len(with_faces), 4) if with_faces else None,
        "round_trip_ms_p50": round(statistics.median(round_trips), 1) if round_trips else None,
        "round_trip_ms_p95": round(round_trips[int(0.95 * (len(round_trips) - 1))], 1) if round_trips else None,
    }
    variants: dict[str, list[str | None]] = {
        "server": [r.faces[0]["emotion"] if r.faces else None for r in replies],
        "raw": [max(r.faces[0]["raw_scores"], key=r.faces[0]["raw_scores"].get) if r.faces else None for r in replies],
        "smoothing_0": [
            faces[0]["emotion"] if faces else None
            for faces in retrack(replies, clip.fps, smoothing_ms=0, switch_margin=label_margin)
        ],
    }
    for name, labels in variants.items():
        summary[name] = _label_figures(labels, replies, clip, onset_frame, onset_label)
    return summary


def format_timeline(replies: Sequence[Reply], clip: Clip) -> str:
    """One line per answered frame: its index, the largest face's id, shown label, raw label and top scores."""
    lines = [f"{clip.name}: frame  t(s)  id  shown     raw       happy(smoothed/raw)"]
    for r in replies:
        if not r.faces:
            lines.append(f"  {r.index:5d} {r.index / clip.fps:5.2f}   -")
            continue
        f = r.faces[0]
        raw = max(f["raw_scores"], key=f["raw_scores"].get)
        lines.append(
            f"  {r.index:5d} {r.index / clip.fps:5.2f} {f['id']:3d}  {f['emotion']:<9} {raw:<9} "
            f"{f['scores']['happy']:.2f}/{f['raw_scores']['happy']:.2f}"
        )
    return "\n".join(lines)


SWEEP_SMOOTHING_MS = (0, 100, 150, 200, 250, 300, 400, 500, 700)
SWEEP_MARGINS = (0.0, 0.1, 0.15, 0.2, 0.3)


def sweep(
    runs: Sequence[tuple[Clip, Sequence[Reply]]], *, onset_clip: str | None, onset_frame: int | None, onset_label: str
) -> str:
    """Label changes (all clips) and onset delay for tracker options, re-run on the same raw scores."""
    lines = ["smoothing_ms margin  changes " + " ".join(f"{c.name[:14]:>14}" for c, _ in runs) + "  onset_delay_s"]
    for smoothing_ms in SWEEP_SMOOTHING_MS:
        for margin in SWEEP_MARGINS:
            per_clip, delay = [], None
            for clip, replies in runs:
                faces = retrack(replies, clip.fps, smoothing_ms=smoothing_ms, switch_margin=margin)
                labels = [f[0]["emotion"] if f else None for f in faces]
                figures = _label_figures(labels, replies, clip, onset_frame, onset_label)
                per_clip.append(figures["label_changes"])
                if clip.name == onset_clip:
                    delay = figures.get("onset_frame_delay_s")
            lines.append(
                f"{smoothing_ms:12d} {margin:6.2f} {sum(per_clip):8d} "
                + " ".join(f"{n:14d}" for n in per_clip)
                + f"  {delay}"
            )
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{s['clip']}: {s['frames']} frames at {s['fps']} fps, {s['frames_answered']} sent and answered; "
        f"faces in {s['frames_with_faces']}, {s['faces_per_frame']} faces/frame, {s['boxes']} boxes, "
        f"{s['track_ids']} track ids, main id on {s['main_id_share']} of the frames with a face; "
        f"round trip p50 {s['round_trip_ms_p50']} ms, p95 {s['round_trip_ms_p95']} ms"
    ]
    for name in ("server", "smoothing_0", "raw"):
        v = s[name]
        line = (
            f"  {name:<12} label changes {v['label_changes']} ({v['label_changes_per_s']}/s), "
            f"{v['short_label_runs']} shown < {FLICKER_S} s"
        )
        if "onset_frame_delay_s" in v:
            line += f"; onset -> label: {v['onset_frame_delay_s']} s of clip, {v['onset_seen_delay_s']} s as seen"
        lines.append(line)
    return "\n".join(lines)


async def replay_clips(
    url: str, clips: Sequence[Clip], *, timeline: bool = False, realtime: bool = True
) -> list[tuple[Clip, list[Reply], dict[str, int] | None]]:
    """Each clip on a connection of its own (fresh tracks and detection schedule): its replies, and
    the server's face searches meanwhile (from its /metrics; None when it does not count them)."""
    runs = []
    metrics_url = url.replace("ws://", "http://").replace("wss://", "https://").removesuffix("/ws") + "/metrics"
    async with aiohttp.ClientSession() as session:
        for clip in clips:
            before = await _text(session, metrics_url)
            async with session.ws_connect(url, max_msg_size=0) as ws:
                hello = json.loads((await ws.receive(timeout=REPLY_TIMEOUT_S)).data)
                if hello.get("type") != "hello":
                    raise ConnectionError(f"expected hello, got {hello}")
                replies = await play(ws, clip, realtime=realtime)
            after = await _text(session, metrics_url)
            if timeline:
                print(format_timeline(replies, clip), flush=True)
            runs.append((clip, replies, search_counts(before, after)))
    return runs


async def _text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as resp:
        return await resp.text() if resp.status == 200 else ""


async def _health(url: str) -> dict[str, Any]:
    http = url.replace("ws://", "http://").replace("wss://", "https://").removesuffix("/ws") + "/healthz"
    async with aiohttp.ClientSession() as session, session.get(http) as resp:
        return dict(await resp.json())


async def _run(ns: argparse.Namespace, clips: list[Clip]) -> list[tuple[Clip, list[Reply], dict[str, int] | None]]:
    from fer_async.bench.harness import ServerProcess

    server: ServerProcess | None = None
    url = ns.url
    if url is None:
        server = ServerProcess(ns.server_arg)
        await server.start()
        url = server.base_url.replace("http://", "ws://") + "/ws"
    try:
        health = await _health(url)
        print(f"server: detector {health.get('detector')}, device {health.get('device')}", flush=True)
        return await replay_clips(url, clips, timeline=ns.timeline, realtime=not ns.sweep)
    finally:
        if server is not None:
            await server.stop()


def _onset(text: str) -> tuple[str, int, str]:
    name, _, rest = text.partition("=")
    frame, _, label = rest.partition(":")
    if not name or not frame.isdigit() or label not in EMOTIONS:
        raise argparse.ArgumentTypeError(f"expected CLIP=FRAME:LABEL with LABEL one of {', '.join(EMOTIONS)}")
    return name, int(frame), label


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clips", nargs="+", type=Path, help="video files")
    p.add_argument("--url", help="ws://HOST:PORT/ws of a running server (default: start one)")
    p.add_argument("--server-arg", action="append", default=[], help="option for the started server (repeatable)")
    p.add_argument(
        "--onset",
        action="append",
        default=[],
        type=_onset,
        metavar="CLIP=FRAME:LABEL",
        help="the frame of CLIP (file name) where LABEL starts, e.g. single_face.mp4=18:happy (repeatable)",
    )
    p.add_argument("--timeline", action="store_true", help="also print each answered frame's largest face")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="send EVERY frame (not real time) and print label changes and onset delay (on the first clip) "
        "for a grid of --smoothing-ms and --label-margin, re-run on the same raw scores",
    )
    ns = p.parse_args(argv)
    # The started server's settings, resolved as it will resolve them: a bad one stops here.
    ns.settings = Settings.from_args(ns.server_arg, prog=f"{PROG} --server-arg")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        clips = [load_clip(path) for path in ns.clips]
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    onsets = {name: (frame, label) for name, frame, label in ns.onset}
    runs = asyncio.run(_run(ns, clips))
    if ns.sweep:
        onset_clip = next((clip.name for clip in clips if clip.name in onsets), None)
        frame, label = onsets.get(onset_clip or "", (None, "happy"))
        print(sweep([run[:2] for run in runs], onset_clip=onset_clip, onset_frame=frame, onset_label=label))
        return 0
    summaries = []
    for clip, replies, searches in runs:
        frame, label = onsets.get(clip.name, (None, "happy"))
        summary = summarise(replies, clip, onset_frame=frame, onset_label=label, label_margin=ns.settings.label_margin)
        if searches is not None:
            summary |= detection_figures(searches)
        summaries.append(summary)
    for summary in summaries:
        print(format_summary(summary))
        if "searches" in summary:
            print("  " + format_detection(summary["clip"], summary))
    for summary in summaries:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
