"""Emotion labels in FER2013 order and the JSON form of analysis results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The seven FER2013 classes, in the dataset's own label order (0..6).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

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

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "faces": [face.to_json() for face in self.faces],
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
        }
