"""Synthetic test images and clips made from one real face photo, for the bench, the demo and the tests.

Every face is scikit-image's astronaut portrait (Eileen Collins, a NASA photo in the public
domain), so the repository ships no dataset images: `compose_frame` pastes it, shrunk, on a
soft face-free gradient; `make_frames` turns that into distinct webcam-like JPEGs (`moving_frames`:
a face moving smoothly from one to the next); `write_video`
and `write_y4m` turn frames into clips (OpenCV video files, or the uncompressed y4m Chromium
plays as a fake webcam). scikit-image is a dev dependency: only these helpers need it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

FRAME_WIDTH, FRAME_HEIGHT = 640, 480  # a common webcam frame
FACE_SIDE = 400  # the 512 px astronaut photo is shrunk to this; her face is then ~75 px wide
JPEG_QUALITY = 85  # what a browser's canvas.toBlob("image/jpeg", 0.85) sends
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG"}


def astronaut_bgr() -> np.ndarray:
    """skimage's astronaut photo (512x512, a real frontal face around x 180-270, y 70-160), as BGR."""
    try:
        from skimage import data as skdata
    except ImportError as exc:  # scikit-image is a dev extra, not a server dependency
        raise SystemExit(
            "synthetic faces need scikit-image: pip install scikit-image (part of the [dev] extra)"
        ) from exc
    return cv2.cvtColor(np.asarray(skdata.astronaut()), cv2.COLOR_RGB2BGR)


def background(width: int, height: int, seed: int) -> np.ndarray:
    """A soft, face-free colour gradient with a little sensor noise (BGR uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(60, 180, size=3).astype(np.float32)
    tilt = rng.uniform(-50, 50, size=(3, 2)).astype(np.float32)
    channels = [base[c] + tilt[c, 0] * xx / width + tilt[c, 1] * yy / height for c in range(3)]
    image = np.stack(channels, axis=-1) + rng.normal(0.0, 3.0, size=(height, width, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def compose_frame(
    photo: np.ndarray,
    x: int,
    y: int,
    *,
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
    side: int = FACE_SIDE,
    seed: int = 0,
) -> np.ndarray:
    """`photo` shrunk to `side` x `side` and pasted at (x, y) (kept inside the frame) on a gradient background (BGR)."""
    frame = background(width, height, seed)
    paste(frame, photo, max(0, min(x, width - side)), max(0, min(y, height - side)), side)
    return frame


def paste(frame: np.ndarray, photo: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    """`photo` shrunk to `side` x `side` and pasted into `frame` at (x, y), in place; the part
    beyond the frame's edges is cut off (a face entering the picture). Returns `frame`."""
    small = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + side), min(height, y + side)
    if x0 < x1 and y0 < y1:
        frame[y0:y1, x0:x1] = small[y0 - y : y1 - y, x0 - x : x1 - x]
    return frame


def jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return bytes(buffer.tobytes())


def frame_position(
    index: int, *, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, side: int = FACE_SIDE
) -> tuple[int, int]:
    """A deterministic, well-spread paste position for frame number `index`."""
    rng = random.Random(index)
    return rng.randint(0, max(0, width - side)), rng.randint(0, max(0, height - side))


def make_frames(count: int, *, first: int = 0, quality: int = JPEG_QUALITY) -> list[bytes]:
    """`count` distinct 640x480 JPEGs, each with one real face at a different position."""
    photo = astronaut_bgr()
    return [jpeg(compose_frame(photo, *frame_position(i), seed=i), quality) for i in range(first, first + count)]


def moving_frames(count: int, *, step: float = 6.0, quality: int = JPEG_QUALITY) -> list[bytes]:
    """`count` 640x480 JPEGs of one real face moving `step` px a frame around an ellipse: cycled,
    the face moves on without a jump, as a webcam's would (the bench's clients send these)."""
    photo = astronaut_bgr()
    radius_x = min((FRAME_WIDTH - FACE_SIDE) / 2, count * step / (2 * math.pi) * 1.25)
    radius_y = min((FRAME_HEIGHT - FACE_SIDE) / 2, radius_x / 2)
    centre_x, centre_y = (FRAME_WIDTH - FACE_SIDE) / 2, (FRAME_HEIGHT - FACE_SIDE) / 2
    frames = []
    for i in range(count):
        angle = 2 * math.pi * i / count
        x, y = round(centre_x + radius_x * math.cos(angle)), round(centre_y + radius_y * math.sin(angle))
        frames.append(jpeg(compose_frame(photo, x, y, seed=i), quality))
    return frames


def drifting_face_frames(
    count: int, *, width: int, height: int, side: int, start: tuple[int, int], step: tuple[int, int], seed: int = 0
) -> list[np.ndarray]:
    """`count` frames of the face moving `step` pixels per frame from `start` (a short clip)."""
    photo = astronaut_bgr()
    (x, y), (dx, dy) = start, step
    return [
        compose_frame(photo, x + dx * i, y + dy * i, width=width, height=height, side=side, seed=seed + i)
        for i in range(count)
    ]


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write BGR frames (all one size) with OpenCV: mp4v for .mp4/.m4v, MJPG for .avi."""
    fourcc = FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"unsupported extension {path.suffix!r}; use one of {', '.join(FOURCC)}")
    if not frames:
        raise ValueError("a clip needs at least one frame")
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} video to {path}")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


# ------------------------------------------------------------------------------------ y4m
#
# Chromium's `--use-file-for-fake-video-capture=FILE.y4m` plays an uncompressed YUV4MPEG2 file
# (4:2:0) in a loop as the webcam. The format is written by hand: one text header line, then
# per frame the line `FRAME` and the I420 planes (Y, then U, then V), which is exactly the
# memory layout `cv2.cvtColor(..., COLOR_BGR2YUV_I420)` returns.


def write_y4m(path: Path, frames_bgr: Sequence[np.ndarray], fps: int) -> Path:
    """Write BGR uint8 frames (all the same even width and height) as a C420 y4m file."""
    if not frames_bgr:
        raise ValueError("a clip needs at least one frame")
    height, width = frames_bgr[0].shape[:2]
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 needs even dimensions, got {width}x{height}")
    with path.open("wb") as out:
        # Ip: progressive, A1:1: square pixels, C420jpeg: 4:2:0 with centred chroma (what
        # cvtColor produces), the default 4:2:0 flavour Chromium's y4m parser accepts.
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for frame in frames_bgr:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(f"every frame must be uint8 {width}x{height}x3, got {frame.dtype} {frame.shape}")
            i420 = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)  # shape (h * 3 / 2, w): Y, U, V planes
            out.write(b"FRAME\n")
            out.write(i420.tobytes())
    return path
