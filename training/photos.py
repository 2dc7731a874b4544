"""How the network reads real photos whose expression you can name, through the server's path.

    python -m training.photos DIR [--against weights/] [--cameras original,tilt15,dark35]

Every image in DIR whose file name contains an expression (`angry_1.jpg`, `sad_crying_child.png`;
the first of `fer_async.labels.EMOTIONS` found in the name, case-insensitive) is decoded, its
largest face found and cropped as the server does (`fer_async.recognition.Analyzer`: detector,
alignment, the network with flip TTA), at each camera condition of `training.cameras` asked for.
Prints one line per photo and condition (the label, its score and the named expression's
score), the share read as named, and which other labels the misses got; `--against DIR`
prints the second network's reading beside the first. Ends with ONE line of JSON.

Photos of people are not shipped with the project: use your own, or public ones whose licence
allows it (the model card names the set its figures come from).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from fer_async.config import add_model_options, resolve_options
from fer_async.imaging import ImageError, encode_jpeg
from fer_async.labels import EMOTIONS, FrameResult
from fer_async.recognition import Analyzer
from training.cameras import CAMERAS
from training.data import IMAGE_SUFFIXES

JPEG_QUALITY = 90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.photos", description=__doc__)
    p.add_argument("folder", type=Path, help="photos named with their expression")
    p.add_argument("--against", type=Path, metavar="DIR", help="also read them with the network in DIR")
    p.add_argument(
        "--cameras",
        default="original",
        help=f"comma-separated conditions of training.cameras (default: %(default)s; any of {', '.join(CAMERAS)})",
    )
    add_model_options(p)
    args = p.parse_args(argv)
    resolve_options(p, args)  # command line > FER_* > the server's default
    args.cameras = [name.strip() for name in args.cameras.split(",") if name.strip()]
    unknown = [name for name in args.cameras if name not in CAMERAS]
    if unknown:
        p.error(f"unknown camera condition(s) {unknown}; choose from {list(CAMERAS)}")
    return args


def named_expression(path: Path) -> str | None:
    """The expression a file name names: the earliest EMOTIONS word in it."""
    name = path.stem.lower()
    found = [(name.find(emotion), emotion) for emotion in EMOTIONS if emotion in name]
    return min(found)[1] if found else None


def named_photos(folder: Path) -> list[tuple[Path, str]]:
    photos = []
    for path in sorted(folder.iterdir()):
        expression = named_expression(path)
        if path.suffix.lower() in IMAGE_SUFFIXES and expression is not None:
            photos.append((path, expression))
    return photos


def camera_frame(image: np.ndarray, camera: str, seed: int = 0) -> bytes:
    """The photo as a camera condition renders it (grey conditions act on each channel alike), as JPEG."""
    rendered = np.dstack([CAMERAS[camera].render(image[..., c], np.random.default_rng(seed)) for c in range(3)])
    return encode_jpeg(np.ascontiguousarray(rendered), JPEG_QUALITY)


def read(analyzer: Analyzer, frames: list[bytes]) -> list[tuple[str, float, tuple[float, ...]] | None]:
    """(label, its score, all scores) of the largest face of each frame; None where no face was found."""
    readings: list[tuple[str, float, tuple[float, ...]] | None] = []
    for result in analyzer.analyze(frames):
        if isinstance(result, ImageError):
            raise ValueError(str(result))
        assert isinstance(result, FrameResult)
        if not result.faces:
            readings.append(None)
            continue
        face = result.faces[0]
        readings.append((face.emotion, max(face.scores), face.scores))
    return readings


def summarise(expected: list[str], readings: list[tuple[str, float, tuple[float, ...]] | None]) -> dict[str, object]:
    found = [(want, got) for want, got in zip(expected, readings, strict=True) if got is not None]
    misses = Counter(f"{want}->{got[0]}" for want, got in found if got[0] != want)
    return {
        "photos": len(expected),
        "faces_found": len(found),
        "read_as_named": round(sum(got[0] == want for want, got in found) / len(found), 4) if found else None,
        "misses": dict(misses.most_common()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.folder.is_dir():
        print(f"photos: error: no such folder: {args.folder}", file=sys.stderr)
        return 2
    photos = named_photos(args.folder)
    if not photos:
        print(f"photos: error: no photo in {args.folder} names an expression ({', '.join(EMOTIONS)})", file=sys.stderr)
        return 2
    from fer_async.detector import create_detector_for

    detector, _ = create_detector_for(args.detector, args.detector_model, detect_width=args.detect_width)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fer_async.model import FacialExpressionModel

    networks = {"weights": args.weights, **({"against": args.against} if args.against else {})}
    frames, expected, names = [], [], []
    for path, expression in photos:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"photos: error: cannot read {path}", file=sys.stderr)
            return 2
        for camera in args.cameras:
            frames.append(camera_frame(image, camera))
            expected.append(expression)
            names.append(f"{path.name} [{camera}]")
    results: dict[str, object] = {"folder": str(args.folder), "cameras": args.cameras}
    readings = {}
    for key, weights in networks.items():
        model = FacialExpressionModel(
            weights, args.model_name, flip_tta=args.flip_tta, runtime=args.runtime, precision=args.model_precision
        )
        with Analyzer(model, detector, align=args.align) as analyzer:
            readings[key] = read(analyzer, frames)
        results[key] = {"network": str(weights), **summarise(expected, readings[key])}
    for i, (name, want) in enumerate(zip(names, expected, strict=True)):
        cells = []
        for key in networks:
            got = readings[key][i]
            cells.append(
                "no face" if got is None else f"{got[0]} {got[1]:.2f} ({want} {got[2][EMOTIONS.index(want)]:.2f})"
            )
        print(f"{name:48s} " + " | ".join(f"{cell:34s}" for cell in cells))
    for key in networks:
        figures = results[key]
        assert isinstance(figures, dict)
        print(f"{key} ({figures['network']}): read as named {figures['read_as_named']}, misses {figures['misses']}")
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
