"""Emotion labels in FER2013 order and the JSON form of analysis results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: The seven FER2013 classes, in the dataset's own label order (0..6).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: The colour each emotion is drawn in, as (red, green, blue): the one table behind the pages'
#: boxes and charts, the MJPEG overlay and the timeline plots, so they all agree. Picked to
#: stand out on light and dark video.
EMOTION_COLOURS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "angry": (220, 40, 40),
        "disgust": (40, 140, 40),
        "fear": (160, 60, 160),
        "happy": (255, 200, 0),
        "sad": (40, 120, 200),
        "surprise": (0, 200, 200),
        "neutral": (180, 180, 180),
    }
)


def emotion_colours_css() -> dict[str, str]:
    """EMOTION_COLOURS as CSS hex colours ("#ffc800"), for the pages."""
    return {name: "#{:02x}{:02x}{:02x}".format(*rgb) for name, rgb in EMOTION_COLOURS.items()}


def _relative_luminance(rgb: tuple[int, int, int]) -> float:
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def label_ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text on a label filled with `rgb`: whichever contrasts more (WCAG 2's ratio).

    Every emotion's label then reads at 4.5:1 or more (black on fear's purple was 3.65:1)."""
    luminance = _relative_luminance(rgb)
    on_black, on_white = (luminance + 0.05) / 0.05, 1.05 / (luminance + 0.05)
    return (0, 0, 0) if on_black >= on_white else (255, 255, 255)


def emotion_inks_css() -> dict[str, str]:
    """Each emotion's `label_ink` as a CSS colour, for the pages' overlay."""
    return {name: "#000" if label_ink(rgb) == (0, 0, 0) else "#fff" for name, rgb in EMOTION_COLOURS.items()}


#: The side of the square grey faces the model takes (FER2013's 48x48).
FACE_SIZE = 48

Box = tuple[int, int, int, int]  # x, y, w, h in the source image's pixels


@dataclass(frozen=True)
class Face:
    """One detected face and its classification."""

    box: Box
    scores: tuple[float, ...]  # probabilities in EMOTIONS order

    @property
    def emotion(self) -> str:
        return EMOTIONS[max(range(len(self.scores)), key=self.scores.__getitem__)]

    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "emotion": self.emotion,
            "scores": {name: round(float(p), 4) for name, p in zip(EMOTIONS, self.scores, strict=True)},
        }


@dataclass(frozen=True)
class FrameResult:
    """Everything the server found in one frame."""

    width: int
    height: int
    faces: tuple[Face, ...]
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds, e.g. decode/detect/model
    # Which face detection ran (a schedule.Search value): "full" (the whole frame), "regions" (only
    # around the faces the caller's hints named) or "regions_lost" (one was not there: the whole frame too).
    search: str = "full"

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "faces": [face.to_json() for face in self.faces],
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }
