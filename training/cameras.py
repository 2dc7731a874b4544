"""Camera conditions: the same scene at another exposure or with a tilted head, as real cameras deliver it.

FER2013's faces (fer2013.npz) are all contrast-stretched to 0..255; a webcam's are not. A dim
room, a bright window behind the face, haze or a cheap sensor give faces that span a fraction
of the grey levels. `training.evaluate --via-detector` and `training.clip --camera` render
frames through these conditions before the server's decode, detect and crop path sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    """How a camera renders the scene: grey level = gain * level + offset (+ sensor noise), clipped;
    `tilt` turns the scene about the frame's centre first (a head tilted by that many degrees,
    counter-clockwise as seen)."""

    gain: float = 1.0
    offset: float = 0.0
    noise: float = 0.0  # standard deviation of Gaussian sensor noise, in grey levels
    tilt: float = 0.0  # degrees

    def render(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.tilt:
            height, width = frame.shape[:2]
            turn = cv2.getRotationMatrix2D((width / 2, height / 2), self.tilt, 1.0)
            frame = cv2.warpAffine(frame, turn, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        if self.gain == 1.0 and self.offset == 0.0 and self.noise == 0.0:
            return frame
        levels = frame.astype(np.float32) * self.gain + self.offset
        if self.noise:
            levels += rng.normal(0.0, self.noise, levels.shape).astype(np.float32)
        return np.clip(np.rint(levels), 0, 255).astype(np.uint8)


# Applied to the whole frame (face and background), before any JPEG encoding, as a camera does.
CAMERAS: dict[str, Camera] = {
    "original": Camera(),
    "contrast50": Camera(0.5, 64.0),  # half the contrast around mid-grey: a flat, hazy image
    "contrast25": Camera(0.25, 96.0),  # a quarter: fog, a cheap sensor at its limit
    "dark35": Camera(0.35, 0.0),  # underexposed: 35 % of the light, black stays black
    "dim15noise": Camera(0.15, 0.0, 2.0),  # a dim room: 15 % exposure and sensor noise (sd 2 levels)
    "washed": Camera(0.4, 150.0),  # washed out by a bright window behind the face
    # A head tilted sideways (roll), which FER2013's registered faces hardly show
    # (python -m training.face_template: eye-line roll median 1°, 80 % between -6° and 8°).
    "tilt15": Camera(tilt=15.0),
    "tilt-15": Camera(tilt=-15.0),
    "tilt30": Camera(tilt=30.0),
    "tilt-30": Camera(tilt=-30.0),
}
