"""`python -m fer_async.bench.detect_width`: the smallest face full detection finds, and what it costs, per width.

    python -m fer_async.bench.detect_width --detector-model ../shared/models/face_detection_yunet.onnx

For each frame size of `--frames` (default 1280x720, 1920x1080 and 3840x2160) and each
detection width of `--widths` (default 320, 640, 960 and `auto`, the server's default), a real
photo's face (scikit-image's astronaut) is pasted at each side of `--sides` pixels into a
frame of that size (a soft gradient with sensor noise, fer_async.synthetic) and the detector is asked for
it. Prints, per frame size and width, the face sides found and the median CPU time of one full
detection of that frame (`--repeats` detections, after two to warm up; CPU time of this process,
so other work on the machine does not count, but the detector's own threads do). Ends with
ONE line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from fer_async.config import Settings, add_model_options, resolve_options
from fer_async.detector import FaceDetector, create_detector_for
from fer_async.detector_model import AUTO_DETECT_WIDTH, detection_width
from fer_async.options import options_of
from fer_async.synthetic import astronaut_bgr, background, paste
from fer_async.tracker import iou

DEFAULT_FRAMES = ((1280, 720), (1920, 1080), (3840, 2160))
DEFAULT_WIDTHS = (320, 640, 960, AUTO_DETECT_WIDTH)
DEFAULT_SIDES = (24, 32, 40, 48, 64, 80, 100, 128)
# Her face fills this share of the astronaut photo's width (YuNet's box, 112 of 512 px).
FACE_SHARE = 112 / 512
MATCH_IOU = 0.3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fer_async.bench.detect_width", description=__doc__)
    p.add_argument("--frames", type=_sizes, default=DEFAULT_FRAMES, help="frame sizes, e.g. 1920x1080,3840x2160")
    p.add_argument("--widths", type=_widths, default=DEFAULT_WIDTHS, help="detection widths, e.g. 320,640,auto")
    p.add_argument("--sides", type=_ints, default=DEFAULT_SIDES, help="face sides in pixels, e.g. 32,48,64")
    p.add_argument("--repeats", type=int, default=20, help="timed detections per frame size and width")
    add_model_options(p, ("detector", "detector_model"))
    args = p.parse_args(argv)
    args.settings = resolve_options(p, args, ("detector", "detector_model"))
    return args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _widths(text: str) -> tuple[int, ...]:
    parse = options_of(Settings)["detect_width"].parse  # the server's own reading of a width or 'auto'
    return tuple(parse(part) for part in text.split(","))


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text.split(","):
        width, height = part.lower().split("x")
        sizes.append((int(width), int(height)))
    return tuple(sizes)


def frame_with_face(width: int, height: int, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A width x height frame with the astronaut's face `side` px wide, and where that face is."""
    photo_side = round(side / FACE_SHARE)
    x, y = width // 2, height // 3
    frame = paste(background(width, height, seed=side), astronaut_bgr(), x, y, photo_side)
    # Her face's box in the photo (YuNet's, 168, 63, 112, 112 of 512), scaled to the pasted size.
    scale = photo_side / 512
    return frame, (x + round(168 * scale), y + round(63 * scale), side, side)


def measure(
    settings: Settings, frames: Sequence[tuple[int, int]], widths: Sequence[int], sides: Sequence[int], repeats: int
) -> list[dict[str, Any]]:
    results = []
    for width in widths:
        detector, name = create_detector_for(settings.detector, settings.detector_model, detect_width=width)
        for frame_width, frame_height in frames:
            found = [side for side in sides if _finds(detector, frame_width, frame_height, side)]
            frame, _ = frame_with_face(frame_width, frame_height, max(sides))
            results.append(
                {
                    "detector": name,
                    "frame": f"{frame_width}x{frame_height}",
                    "width": "auto" if width == AUTO_DETECT_WIDTH else width,
                    "detected_at": detection_width(frame_width, getattr(detector, "detect_width", width)),
                    "sides_found": found,
                    "ms_per_detection": round(_median_ms(detector, frame, repeats), 2),
                }
            )
    return results


def _finds(detector: FaceDetector, width: int, height: int, side: int) -> bool:
    frame, box = frame_with_face(width, height, side)
    return any(iou(found, box) >= MATCH_IOU for found in detector.detect(frame))


def _median_ms(detector: FaceDetector, frame: np.ndarray, repeats: int) -> float:
    for _ in range(2):
        detector.detect(frame)
    times = []
    for _ in range(repeats):
        started = time.process_time()
        detector.detect(frame)
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    results = measure(args.settings, args.frames, args.widths, args.sides, args.repeats)
    print(f"faces of {', '.join(map(str, args.sides))} px; per frame size and detection width:")
    print(f"{'frame':>10} {'width':>6} {'at':>5} {'ms':>7}  sides found")
    for row in results:
        sides = ", ".join(map(str, row["sides_found"])) or "none"
        print(
            f"{row['frame']:>10} {row['width']!s:>6} {row['detected_at']:>5} {row['ms_per_detection']:>7.2f}  {sides}"
        )
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
