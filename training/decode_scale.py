"""Which resolution should the 48x48 face crops come from? Prints the measurement behind the choice.

    python -m training.decode_scale [--videos ../shared/data/videos] [--detector haar|yunet --detector-model F]

For every JPEG (the tests/data photos, the same photos upscaled to 12 MP, and every 4th frame of
the real clips in --videos, encoded as a browser would at quality 80) the server's detector runs on
the JPEG decoded at reduced scale (`imaging.decode_scaled`, at least the detector's width), and
the faces it finds are cropped twice with the same boxes: from that reduced decode, and from the
full-size decode. Printed: how often the two crops get the same label, their largest probability
difference, and the decode cost of each path (single runs; the machine may be loaded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from fer_async.detector import DETECT_WIDTH, create_detector
from fer_async.imaging import crop_faces, decode_scaled, encode_jpeg
from fer_async.model import FacialExpressionModel

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data"
VIDEOS = REPO.parent / "shared" / "data" / "videos"
BIG_PHOTO = (4000, 3000)  # 12 MP, a phone photo


def jpegs(videos: Path, every: int = 4) -> list[tuple[str, bytes]]:
    found = []
    for photo in sorted(PHOTOS.glob("*.jpg")):
        image = cv2.imread(str(photo))
        assert image is not None
        found.append((photo.name, photo.read_bytes()))
        big = cv2.resize(image, BIG_PHOTO, interpolation=cv2.INTER_CUBIC)
        found.append((f"{photo.stem} at 12 MP", encode_jpeg(big, 90)))
    for clip in sorted(videos.glob("*.mp4")) + sorted(videos.glob("*.mov")):
        capture = cv2.VideoCapture(str(clip))
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                found.append((f"{clip.name}#{index}", encode_jpeg(frame, 80)))
            index += 1
        capture.release()
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=VIDEOS)
    parser.add_argument("--detector", default="haar", choices=("haar", "yunet"))
    parser.add_argument("--detector-model", type=Path, default=None)
    args = parser.parse_args(argv)
    detector = create_detector(args.detector, args.detector_model)
    model = FacialExpressionModel()
    reduced_crops, full_crops = [], []
    reduced_ms, full_ms = 0.0, 0.0
    sides: list[int] = []  # face box side in the reduced decode
    frames = jpegs(args.videos)
    for _name, data in frames:
        started = time.perf_counter()
        reduced = decode_scaled(data, min_width=DETECT_WIDTH)
        middle = time.perf_counter()
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert full is not None
        reduced_ms += (middle - started) * 1000
        full_ms += (time.perf_counter() - middle) * 1000
        boxes = detector.detect(reduced.image)
        if not boxes:
            continue
        sides.extend(w for _x, _y, w, _h in boxes)
        sx, sy = reduced.scale
        full_boxes = [(round(x * sx), round(y * sy), round(w * sx), round(h * sy)) for x, y, w, h in boxes]
        reduced_crops.append(crop_faces(reduced.image, boxes))
        full_crops.append(crop_faces(full, full_boxes))
    p_reduced = model.predict(np.concatenate(reduced_crops))
    p_full = model.predict(np.concatenate(full_crops))
    same = (p_reduced.argmax(1) == p_full.argmax(1)).mean()
    diff = np.abs(p_reduced - p_full)
    print(f"{len(frames)} JPEGs, {len(p_full)} faces ({args.detector}), model on {model.runtime}")
    print(f"face side in the reduced decode: median {np.median(sides):.0f} px, smallest {min(sides)} px")
    print(f"same label from the reduced and the full-size crop: {same:.1%}")
    print(f"probability difference: mean {diff.mean():.4f}, 99th percentile {np.quantile(diff.max(1), 0.99):.4f}")
    print(f"decode per JPEG: reduced {reduced_ms / len(frames):.2f} ms, full size {full_ms / len(frames):.2f} ms")


if __name__ == "__main__":
    main()
