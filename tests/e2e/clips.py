"""Small test clips made from real face photos: a y4m for Chromium's fake webcam, JPEG frames.

Chromium's `--use-file-for-fake-video-capture=FILE.y4m` plays an uncompressed YUV4MPEG2 file
(4:2:0) in a loop as the webcam. We write the format by hand: one text header line, then per
frame the line `FRAME` and the I420 planes (Y, then U, then V), which is exactly the memory
layout `cv2.cvtColor(..., COLOR_BGR2YUV_I420)` returns.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fer_async.bench import FRAME_HEIGHT, FRAME_WIDTH, astronaut_bgr, compose_frame

CLIP_FPS = 15
CLIP_SECONDS = 2.0  # 30 frames x 460,800 bytes = 13.8 MB at 640x480; Chromium loops it
FACE_SIDE = 360  # the astronaut's face is then ~65 px wide in a 640x480 frame


def write_y4m(path: Path, frames_bgr: list[np.ndarray], fps: int = CLIP_FPS) -> Path:
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


def read_y4m(path: Path) -> tuple[dict[str, str], list[np.ndarray]]:
    """(header tags, BGR frames) of a C420 y4m written by `write_y4m` (for checking it)."""
    data = path.read_bytes()
    header_end = data.index(b"\n")
    tokens = data[:header_end].decode("ascii").split()
    if tokens[0] != "YUV4MPEG2":
        raise ValueError("not a YUV4MPEG2 file")
    tags = {token[0]: token[1:] for token in tokens[1:]}
    width, height = int(tags["W"]), int(tags["H"])
    frame_bytes = width * height * 3 // 2
    frames, pos = [], header_end + 1
    while pos < len(data):
        line_end = data.index(b"\n", pos)
        if not data[pos:line_end].startswith(b"FRAME"):
            raise ValueError(f"expected FRAME at byte {pos}")
        plane = np.frombuffer(data, np.uint8, frame_bytes, line_end + 1).reshape(height * 3 // 2, width)
        frames.append(cv2.cvtColor(plane, cv2.COLOR_YUV2BGR_I420))
        pos = line_end + 1 + frame_bytes
    return tags, frames


def face_clip_frames(
    seconds: float = CLIP_SECONDS, fps: int = CLIP_FPS, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT
) -> list[np.ndarray]:
    """The astronaut with a gentle sway (a few pixels, one cycle per loop): a face in every frame.

    The motion is small on purpose: results come back one round trip late, and a box drawn for
    a frame 100 ms old must still sit on the face, so the test can check that it does. The
    cycle is periodic, so Chromium's looping of the file has no jump.
    """
    photo = astronaut_bgr()
    count = max(1, round(seconds * fps))
    x0, y0 = (width - FACE_SIDE) // 2 + 60, (height - FACE_SIDE) // 2
    frames = []
    for i in range(count):
        phase = 2 * np.pi * i / count
        x, y = round(x0 + 12 * np.sin(phase)), round(y0 + 6 * np.cos(phase))
        frames.append(compose_frame(photo, x, y, width=width, height=height, side=FACE_SIDE, seed=7))
    return frames


def make_face_clip(path: Path, seconds: float = CLIP_SECONDS, fps: int = CLIP_FPS) -> Path:
    """A 640x480 y4m of a real face, for `--use-file-for-fake-video-capture`."""
    return write_y4m(path, face_clip_frames(seconds, fps), fps)


def face_frame_jpeg(index: int = 0, quality: int = 85) -> bytes:
    """One 640x480 JPEG with the astronaut's face (a canary / load frame)."""
    x, y = (FRAME_WIDTH - FACE_SIDE) // 2, (FRAME_HEIGHT - FACE_SIDE) // 2
    frame = compose_frame(astronaut_bgr(), x + 20 * (index % 5) - 40, y, side=FACE_SIDE, seed=index)
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()
