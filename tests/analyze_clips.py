"""Short clips for the analysis tests, written with OpenCV from the real photos in tests/data.

* `face_clip`: the astronaut photo upscaled to 960x720 (wider than the 640 px the MJPEG stream
  shrinks frames to) and panned a few pixels per frame, mp4v in MP4, 10 fps.
* `no_face_clip`: the coffee photo, the same way.
* `truncated_clip`: an MJPG AVI cut in half: its header announces every frame, about half decode.
* `empty_clip`: an MP4 container with no frame in it; `not_a_video`: text named .mp4.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fer_async.synthetic import write_video  # the codec follows the suffix: mp4v for .mp4, MJPG for .avi

DATA = Path(__file__).resolve().parent / "data"
CLIP_FPS = 10.0
CLIP_SIZE = (960, 720)
# Where the face is in the 960x720 frame 0 (tests/data/astronaut_640x480.jpg's box x 1.5).
FACE_REGION = (321, 114, 201, 201)
PAN_PX = 2  # per frame, to the right


def photo(name: str, size: tuple[int, int] = CLIP_SIZE) -> np.ndarray:
    image = cv2.imread(str(DATA / name))
    assert image is not None, name
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def panned(image: np.ndarray, frames: int) -> list[np.ndarray]:
    return [np.roll(image, PAN_PX * i, axis=1) for i in range(frames)]


def face_clip(path: Path, frames: int = 12) -> Path:
    return write_video(path, panned(photo("astronaut_640x480.jpg"), frames), CLIP_FPS)


def no_face_clip(path: Path, frames: int = 6) -> Path:
    return write_video(path, panned(photo("coffee_640x480.jpg"), frames), CLIP_FPS)


def truncated_clip(path: Path, frames: int = 20) -> Path:
    """An AVI whose second half is cut off (path must end in .avi)."""
    full = write_video(
        path.with_name("full-" + path.name), panned(photo("astronaut_640x480.jpg", (640, 480)), frames), CLIP_FPS
    )
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    full.unlink()
    return path


def empty_clip(path: Path) -> Path:
    """An MP4 container with no frame in it (fer_async.synthetic.write_video refuses to write one)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), CLIP_FPS, CLIP_SIZE)
    assert writer.isOpened(), path
    writer.release()
    return path


def not_a_video(path: Path) -> Path:
    path.write_text("this is a text file, not a video\n" * 20)
    return path
