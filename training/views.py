"""Fixed augmented views of faces, reproducible anywhere from (seed, view number) alone.

The distillation store (`training.distill`) keeps the teachers' probabilities for view k of
face i; a student trained later, on this machine or another, renders the same view k of face i
again instead of carrying gigabytes of images. The augmentation follows `training.models`'
in-model one, in OpenCV and NumPy so that it needs no backend:

* view 0 is the face itself and view 1 its mirror image (the served flip TTA sees both);
* every other view: mirrored with probability 1/2, rotated ±ROTATION_DEGREES, zoomed ±ZOOM,
  shifted ±SHIFT (replicated border, as `fill_mode="nearest"`), and in about half the views a
  patch of ERASING_AREA of the face replaced by noise.

Contrast jitter is left out on purpose: the network's first layer (`FaceContrast`) stretches
every face to 0..255, which undoes a contrast change made before it.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import cv2
import numpy as np

from training.augmentation import ERASING_AREA, ROTATION_DEGREES, SHIFT, ZOOM

IDENTITY_VIEWS = 2  # view 0: the face, view 1: its mirror
ERASING_PROBABILITY = 0.5
ERASING_ASPECT = (0.3, 3.3)  # height / width of the erased patch (Zhong et al. 2017)


def render_view(faces: np.ndarray, view: int, seed: int) -> np.ndarray:
    """View `view` of every face in `faces` (uint8 [N, H, W]); the same (faces, view, seed) give
    the same pixels. Views are drawn per face from one generator seeded with (seed, view)."""
    if faces.ndim != 3 or faces.dtype != np.uint8:
        raise ValueError(f"faces must be uint8 [N, H, W], got {faces.dtype} {faces.shape}")
    if view < 0:
        raise ValueError(f"view must be >= 0, got {view}")
    if view == 0:
        return faces.copy()
    if view == 1:
        return faces[:, :, ::-1].copy()
    n, height, width = faces.shape
    rng = np.random.default_rng([seed, view])
    flip = np.asarray(rng.random(n) < 0.5)
    angle = np.asarray(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, n))
    scale = 1.0 + np.asarray(rng.uniform(-ZOOM, ZOOM, n))
    shift = rng.uniform(-SHIFT, SHIFT, (n, 2)) * (width, height)
    erase = np.asarray(rng.random(n) < ERASING_PROBABILITY)
    area: np.ndarray = rng.uniform(ERASING_AREA[0], ERASING_AREA[1], n) * height * width
    aspect = np.exp(rng.uniform(np.log(ERASING_ASPECT[0]), np.log(ERASING_ASPECT[1]), n))
    corner = rng.random((n, 2))
    noise = rng.integers(0, 256, faces.shape, dtype=np.uint8)

    out = np.empty_like(faces)
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    for i in range(n):
        face = faces[i, :, ::-1] if flip[i] else faces[i]
        matrix = cv2.getRotationMatrix2D(centre, float(angle[i]), float(scale[i]))
        matrix[:, 2] += shift[i]
        out[i] = cv2.warpAffine(
            np.ascontiguousarray(face), matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if erase[i]:
            patch_h = min(height, max(1, round(float(np.sqrt(area[i] * aspect[i])))))
            patch_w = min(width, max(1, round(float(np.sqrt(area[i] / aspect[i])))))
            top = int(corner[i, 0] * (height - patch_h + 1))
            left = int(corner[i, 1] * (width - patch_w + 1))
            out[i, top : top + patch_h, left : left + patch_w] = noise[i, top : top + patch_h, left : left + patch_w]
    return out


def render_views(faces: np.ndarray, views: int, seed: int, processes: int = 0) -> np.ndarray:
    """Views 0..views-1 of every face: uint8 [views, N, H, W], rendered on `processes` worker
    processes (0 = one per core; the per-face Python loop holds the GIL, so threads would not
    help). Call it before importing a multi-threaded framework: the workers are forked."""
    workers = processes or min(views, len(os.sched_getaffinity(0)))
    if workers <= 1:
        return np.stack([render_view(faces, view, seed) for view in range(views)])
    with ProcessPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(partial(render_view, faces, seed=seed), range(views))))
