"""The text on a face's label reads on its emotion's colour: WCAG 2's contrast ratio of 4.5:1 or
more, on the server's streams and the pages' overlay alike (black on fear's purple was 3.65:1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_async.imaging import draw_annotations
from fer_async.labels import EMOTION_COLOURS, EMOTIONS, Face, _relative_luminance, emotion_inks_css, label_ink


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((_relative_luminance(a), _relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("emotion", EMOTIONS)
def test_every_label_reads_at_4_5_to_1(emotion: str) -> None:
    colour = EMOTION_COLOURS[emotion]
    assert contrast(colour, label_ink(colour)) >= 4.5
    assert emotion_inks_css()[emotion] == ("#000" if label_ink(colour) == (0, 0, 0) else "#fff")


def test_the_server_draws_the_same_ink() -> None:
    image = np.full((240, 320, 3), 128, np.uint8)
    scores = tuple(0.88 if name == "fear" else 0.02 for name in EMOTIONS)
    draw_annotations(image, [Face((100, 100, 80, 80), scores)])
    fill = tuple(int(c) for c in EMOTION_COLOURS["fear"][::-1])  # BGR
    label = image[70:100, 100:180]
    is_fill = np.all(label == fill, axis=2)
    text = label[~is_fill & (cv2.cvtColor(label, cv2.COLOR_BGR2GRAY) > 200)]
    assert is_fill.any() and len(text) > 20  # white letters on the purple fill
