"""Make the demo clip for the MJPEG page from a real photo: `python -m fer_async.demo OUT`.

The clip is built from scikit-image's astronaut photo (Eileen Collins, a NASA portrait in the
public domain) so the repository ships no dataset images: the camera slowly zooms and pans
over the portrait, and a mirrored close-up of the same face drifts in a picture-in-picture
corner, giving two faces at different scales. The motion is periodic, so the clip loops
without a jump.

Codec: mp4v in .mp4 (75 frames at 640x480 come to about 0.7 MB). OpenCV's MJPG-in-AVI writer
has no quality setting through FFMPEG here and makes the same clip 2.7 MB.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

from fer_async.synthetic import FOURCC, astronaut_bgr, write_video

WIDTH, HEIGHT = 640, 480
FPS = 15
SECONDS = 5.0
PIP_SIDE = 200  # the picture-in-picture close-up; its face is ~85 px, well above Haar's minimum


def render_frames(seconds: float = SECONDS, fps: int = FPS) -> list[np.ndarray]:
    """The clip's BGR frames (640x480)."""
    photo = astronaut_bgr()  # 512x512, the face around x 180-270, y 70-160
    scene = cv2.resize(photo, (WIDTH, WIDTH), interpolation=cv2.INTER_AREA)[:HEIGHT]
    close_up = cv2.flip(photo[20:240, 120:340], 1)  # a square around the face, mirrored
    close_up = cv2.resize(close_up, (PIP_SIDE, PIP_SIDE), interpolation=cv2.INTER_AREA)
    close_up = cv2.copyMakeBorder(close_up, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    side = close_up.shape[0]

    count = max(1, round(seconds * fps))
    frames = []
    for i in range(count):
        phase = 2 * math.pi * i / count  # one full period per clip, so it loops seamlessly
        zoom = 1.12 + 0.12 * math.sin(phase)
        # Zoom about the face so it stays in frame, and pan gently around it.
        cx, cy = 280 + 40 * math.sin(phase), 150 + 15 * math.sin(2 * phase)
        matrix = np.array([[zoom, 0, cx - zoom * cx - 20 * math.sin(phase)], [0, zoom, cy - zoom * cy]], np.float32)
        frame = cv2.warpAffine(scene, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        px = WIDTH - side - 16 - round(24 * (1 - math.cos(phase)))
        py = HEIGHT - side - 16 - round(12 * math.sin(phase))
        frame[py : py + side, px : px + side] = close_up
        frames.append(frame)
    return frames


def write_clip(out: Path, seconds: float = SECONDS, fps: int = FPS) -> int:
    """Render and write the clip (.mp4/.m4v: mp4v, .avi: MJPG); returns the number of frames written."""
    if out.suffix.lower() not in FOURCC:
        raise ValueError(f"unsupported extension {out.suffix!r}; use one of {', '.join(FOURCC)}")
    frames = render_frames(seconds, fps)
    write_video(out, frames, fps)
    return len(frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="output file (.mp4 or .avi), e.g. static/videos/demo.mp4")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--fps", type=int, default=FPS)
    args = parser.parse_args(argv)
    count = write_clip(args.out, args.seconds, args.fps)
    size = args.out.stat().st_size
    print(f"wrote {count} frames ({args.seconds:g} s at {args.fps} fps) to {args.out}: {size:,} bytes")


if __name__ == "__main__":
    main()
