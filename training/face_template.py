"""Where FER2013 puts the eyes, nose and mouth: the landmark template of `fer_async.alignment`.

    python -m training.face_template --limit 4000

Each face of a seeded random sample of the training split is shown to YuNet as
`training.evaluate --via-detector` shows it (upscaled to 160 px with INTER_CUBIC on a grey 320x240
frame); the five landmarks of the face nearest the frame's centre are mapped back to 48x48 pixels
(pixel edges at integers). Prints the median and interquartile range of each landmark, the eye
distance, the eye-to-mouth distance and the distribution of the eye line's roll; `--json` also
writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from fer_async.labels import FACE_SIZE
from training.data import DEFAULT_DATA, load_split
from training.server_path import VIA_FACE_SIDE, VIA_FACE_X, VIA_FACE_Y, VIA_FRAME_HEIGHT, VIA_FRAME_WIDTH

LANDMARK_NAMES = ("eye (image left)", "eye (image right)", "nose tip", "mouth (image left)", "mouth (image right)")
DEFAULT_YUNET = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "face_detection_yunet.onnx"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.face_template", description=__doc__)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", default="train")
    p.add_argument("--detector-model", type=Path, default=DEFAULT_YUNET, help="YuNet's ONNX file")
    p.add_argument("--limit", type=int, default=4000, help="faces sampled (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def landmarks_of(faces: np.ndarray, detector_model: Path) -> np.ndarray:
    """[M, 5, 2] landmarks in 48x48 pixels of the faces YuNet found (M <= len(faces))."""
    net = cv2.FaceDetectorYN.create(str(detector_model), "", (VIA_FRAME_WIDTH, VIA_FRAME_HEIGHT), 0.7, 0.3)
    to_face = FACE_SIZE / VIA_FACE_SIDE
    found = []
    for face in faces:
        frame = np.full((VIA_FRAME_HEIGHT, VIA_FRAME_WIDTH), 128, np.uint8)
        big = cv2.resize(face, (VIA_FACE_SIDE, VIA_FACE_SIDE), interpolation=cv2.INTER_CUBIC)
        frame[VIA_FACE_Y : VIA_FACE_Y + VIA_FACE_SIDE, VIA_FACE_X : VIA_FACE_X + VIA_FACE_SIDE] = big
        _, rows = net.detect(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        if rows is None:
            continue
        centre_x = rows[:, 0] + rows[:, 2] / 2
        row = rows[np.argmin(np.abs(centre_x - VIA_FRAME_WIDTH / 2))]
        points = row[4:14].reshape(5, 2) - np.array([VIA_FACE_X, VIA_FACE_Y])
        found.append(points * to_face)
    return np.array(found, np.float64).reshape(-1, 5, 2)


def summarise(points: np.ndarray) -> dict[str, object]:
    eyes, mouth = (points[:, 0] + points[:, 1]) / 2, (points[:, 3] + points[:, 4]) / 2
    roll = np.degrees(np.arctan2(points[:, 1, 1] - points[:, 0, 1], points[:, 1, 0] - points[:, 0, 0]))
    return {
        "faces": len(points),
        "median": {name: np.median(points[:, i], axis=0).round(2).tolist() for i, name in enumerate(LANDMARK_NAMES)},
        "iqr": {
            name: np.percentile(points[:, i], [25, 75], axis=0).round(1).tolist()
            for i, name in enumerate(LANDMARK_NAMES)
        },
        "eye_distance": round(float(np.median(np.linalg.norm(points[:, 1] - points[:, 0], axis=1))), 2),
        "eye_to_mouth": round(float(np.median(np.linalg.norm(mouth - eyes, axis=1))), 2),
        "roll_percentiles_10_25_50_75_90": np.percentile(roll, [10, 25, 50, 75, 90]).round(1).tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.detector_model.is_file():
        print(f"face_template: error: YuNet model not found: {args.detector_model}", file=sys.stderr)
        return 2
    split = load_split(args.data, args.split)
    chosen = np.random.default_rng(args.seed).permutation(len(split))[: args.limit]
    points = landmarks_of(split.x[chosen], args.detector_model)
    if not len(points):
        print("face_template: error: YuNet found no face", file=sys.stderr)
        return 2
    figures = summarise(points)
    print(f"YuNet found {len(points)} of {len(chosen)} faces; medians in 48x48 pixels (x, y) and IQR:")
    for name in LANDMARK_NAMES:
        (x, y), (low, high) = figures["median"][name], figures["iqr"][name]  # type: ignore[index]
        print(f"  {name:20s} ({x:6.2f}, {y:6.2f})   x {low[0]}-{high[0]}, y {low[1]}-{high[1]}")
    print(f"eye distance {figures['eye_distance']}, eyes to mouth {figures['eye_to_mouth']}")
    print(f"eye-line roll, percentiles 10/25/50/75/90: {figures['roll_percentiles_10_25_50_75_90']} degrees")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
