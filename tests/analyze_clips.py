"""Short clips for the analysis tests, written with OpenCV from the real photos in tests/data.

* `face_clip`: the astronaut photo upscaled to 960x720 (wider than the 640 px the MJPEG stream
  shrinks frames to) and panned a few pixels per frame, mp4v in MP4, 10 fps.
* `no_face_clip`: the coffee photo, the same way.
* `truncated_clip`: an MJPG AVI cut in half: its header announces every frame, about half decode.
* `empty_clip`: an MP4 container with no frame in it; `not_a_video`: text named .mp4.
* `portrait_clip`: the face clip as a phone stores a portrait video: frames sideways, and a
  rotation of 90 degrees in the MP4 track header that players (and OpenCV) apply.
* `timed_clip` (PyAV): the face clip with each frame at a given time in ms, in a millisecond
  time base: a variable frame rate, or a WebM as a browser's MediaRecorder writes it (VP8,
  `live`: no duration, no frame count, no rate in the header).
"""

from __future__ import annotations

import struct
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
# The face in portrait_clip's upright 720x960 frame (the photo's box x 1.125, 210 px down).
PORTRAIT_FACE_REGION = (241, 296, 151, 151)


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


def portrait_clip(path: Path, frames: int = 6, *, rotation_in_header: bool = True) -> Path:
    """Upright 720x960 frames stored turned a quarter left (960x720), as phones store them; with
    `rotation_in_header`, the track header's display matrix says to turn them back (90 degrees)."""
    canvas = np.full((960, 720, 3), 40, np.uint8)
    canvas[210:750] = photo("astronaut_640x480.jpg", (720, 540))
    stored = cv2.rotate(canvas, cv2.ROTATE_90_COUNTERCLOCKWISE)
    write_video(path, [stored] * frames, CLIP_FPS)
    if rotation_in_header:
        data = bytearray(path.read_bytes())
        # ISO 14496-12 tkhd (version 0): the 3x3 display matrix starts 48 bytes into the box;
        # a, b, c, d, x, y in 16.16 fixed point, u, v, w in 2.30. This one turns 90 degrees clockwise.
        box = data.index(b"tkhd") - 4
        assert data[box + 8] == 0, "expected a version 0 tkhd"
        matrix = (0, 1 << 16, 0, (-1 << 16) & 0xFFFFFFFF, 0, 0, 720 << 16, 0, 1 << 30)
        data[box + 48 : box + 84] = struct.pack(">9I", *matrix)
        path.write_bytes(data)
    return path


# A face 56 px wide in a 1920x1080 frame: 9 px once the frame is shrunk to 320 for detection.
SMALL_FACE_SIDE = 56
SMALL_FACE_AT = (1200, 500)  # where the photo's top left corner is pasted


def small_face_clip(path: Path, frames: int = 4) -> Path:
    """A wide shot: the astronaut photo scaled so her face is SMALL_FACE_SIDE px, in a 1920x1080 frame."""
    scale = SMALL_FACE_SIDE / FACE_REGION[2] * CLIP_SIZE[0] / 640  # FACE_REGION is the 960x720 photo's
    small = photo("astronaut_640x480.jpg", (round(640 * scale), round(480 * scale)))
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    x, y = SMALL_FACE_AT
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    return write_video(path, [frame] * frames, CLIP_FPS)


def timed_clip(path: Path, times_ms: list[int], *, live: bool = False, size: tuple[int, int] = (640, 480)) -> Path:
    """The panned face at `times_ms`: VP8 in WebM for a .webm (`live`: as a browser records), else H.264."""
    from fractions import Fraction

    import av

    frames = panned(photo("astronaut_640x480.jpg", size), len(times_ms))
    webm = path.suffix == ".webm"
    with av.open(str(path), "w", format="webm" if webm else None, options={"live": "1"} if live else {}) as out:
        stream = out.add_stream("libvpx" if webm else "libx264", options={} if webm else {"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for frame, ms in zip(frames, times_ms, strict=True):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:, :, ::-1]), format="rgb24")
            picture.pts, picture.time_base = ms, Fraction(1, 1000)
            out.mux(stream.encode(picture.reformat(format="yuv420p")))
        out.mux(stream.encode())
    return path
