"""Faces turned upright by their landmarks before they are cut to 48x48.

FER2013's faces were registered upright; a webcam's often are not (a tilted head). YuNet gives
five landmarks per face (the eyes, the nose tip, the mouth corners). `alignment_matrix` finds the
rotation, scale and shift (a similarity, least squares over the five points) that moves them onto
`TEMPLATE`, where FER2013's faces have them; `aligned_face` turns the face's box by that rotation
and cuts it out.

`TEMPLATE` is measured, not guessed (`python -m training.face_template`): YuNet on 3,653 FER2013
training faces, upscaled to 160 px and pasted on a grey frame as `training.evaluate
--via-detector` shows them, gave these medians in 48x48 pixels (x right, y down; pixel edges at
integers): eyes (14.4, 18.3) and (33.0, 18.7), nose tip (22.9, 27.9), mouth corners (15.7, 36.1)
and (31.1, 36.4). The template is that, mirrored about the vertical centre line (x = 24), so the
eye line is level and the mouth centred.

Only the rotation is used; the box keeps the face's place and size. Measured on 800 PublicTest
faces through the server path (weights/fernet.md, "Alignment"): placing and scaling the face by
the landmarks as well cost 1.4 points on upright faces, where the box (already framed as FER2013's
faces) was steadier. YuNet's landmarks also lean towards upright: a head tilted by 30° reads as
about 11°, so a tilt is only partly undone.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fer_async.labels import FACE_SIZE, Box

# The landmarks' order is YuNet's: the eye on the image's left first, then the other eye, the
# nose tip, the mouth corner on the image's left, the other mouth corner.
_HALF_EYES = (33.04 - 14.35) / 2
_EYE_Y = (18.29 + 18.72) / 2
_NOSE_Y = 27.91
_HALF_MOUTH = (31.07 - 15.69) / 2
_MOUTH_Y = (36.05 + 36.37) / 2
_CENTRE_X = FACE_SIZE / 2
TEMPLATE = np.array(
    [
        [_CENTRE_X - _HALF_EYES, _EYE_Y],
        [_CENTRE_X + _HALF_EYES, _EYE_Y],
        [_CENTRE_X, _NOSE_Y],
        [_CENTRE_X - _HALF_MOUTH, _MOUTH_Y],
        [_CENTRE_X + _HALF_MOUTH, _MOUTH_Y],
    ],
    np.float64,
)
LANDMARKS = len(TEMPLATE)


_TEMPLATE_MEAN = TEMPLATE.mean(axis=0)
_TEMPLATE_CENTRED = [(float(x), float(y)) for x, y in TEMPLATE - _TEMPLATE_MEAN]


def _similarity(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The least-squares similarity taking `landmarks` [5, 2] onto `TEMPLATE` (closed form):
    (a, b) of its rotation-and-scale [[a, -b], [b, a]], and the landmarks' mean x, y.

    Plain floats: five points are too few for numpy to pay, and this runs for every face of
    every frame on the detection thread.
    """
    points = np.asarray(landmarks, np.float64).reshape(LANDMARKS, 2).tolist()
    mean_x = sum(x for x, _ in points) / LANDMARKS
    mean_y = sum(y for _, y in points) / LANDMARKS
    along = across = spread = 0.0
    for (x, y), (tx, ty) in zip(points, _TEMPLATE_CENTRED, strict=True):
        sx, sy = x - mean_x, y - mean_y
        along += sx * tx + sy * ty
        across += sx * ty - sy * tx
        spread += sx * sx + sy * sy
    if not math.isfinite(spread) or spread < 1e-6:
        raise ValueError("the landmarks coincide: no face to align")
    return along / spread, across / spread, mean_x, mean_y


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) taking `landmarks` [5, 2] (image pixels)
    closest to `TEMPLATE` in the least-squares sense (closed form, no iteration)."""
    a, b, mean_x, mean_y = _similarity(landmarks)
    rotate_scale = np.array([[a, -b], [b, a]])
    shift = _TEMPLATE_MEAN - rotate_scale @ np.array([mean_x, mean_y])
    return np.hstack([rotate_scale, shift[:, None]])


def roll_degrees(landmarks: np.ndarray) -> float:
    """How far the face is turned in the image plane, clockwise as seen (y down), in degrees."""
    a, b, _, _ = _similarity(landmarks)
    return -math.degrees(math.atan2(b, a))


def aligned_face(image: np.ndarray, box: Box, landmarks: np.ndarray) -> np.ndarray:
    """The uint8 48x48 grey face in `box` of `image` (grey or BGR), turned upright by its landmarks.

    The box keeps the face's place and size (the detector's boxes are framed as FER2013's faces
    already, see fer_async.detector); the landmarks only say how far to turn it. A face is nearly
    always shrunk on the way to 48 px, and warpAffine only interpolates: so it warps to an
    integer multiple of 48 near the box's own size and shrinks that with INTER_AREA, which
    averages instead of aliasing (as the box crop does). Only the face's neighbourhood is
    converted to grey.
    """
    x, y, w, h = box
    side = max(w, h)
    if side < 1:
        raise ValueError(f"empty face box {box}")
    centre_x, centre_y = x + w / 2, y + h / 2
    oversample = max(1, min(8, side // FACE_SIZE))
    out = FACE_SIZE * oversample
    # The neighbourhood the turned square can reach: its circumscribed circle, plus a pixel.
    reach = math.ceil(side * math.sqrt(0.5)) + 1
    height, width = image.shape[:2]
    x0, y0 = max(0, math.floor(centre_x) - reach), max(0, math.floor(centre_y) - reach)
    x1, y1 = min(width, math.ceil(centre_x) + reach), min(height, math.ceil(centre_y) + reach)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {box} lies outside the {width}x{height} image")
    region = image[y0:y1, x0:x1]
    if region.ndim == 3:
        region = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
    # Undo the roll about the box centre (OpenCV's positive angle turns the image counter-clockwise
    # as seen), and scale the box to the output square.
    turn = cv2.getRotationMatrix2D((centre_x - x0, centre_y - y0), roll_degrees(landmarks), out / side)
    turn[:, 2] += np.array([out / 2 - (centre_x - x0), out / 2 - (centre_y - y0)])
    # Outside the frame: the nearest edge pixel, as the training faces' borders are image, not black.
    warped = cv2.warpAffine(region, turn, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if oversample == 1:
        return np.asarray(warped, np.uint8)
    return np.asarray(cv2.resize(warped, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA), np.uint8)
