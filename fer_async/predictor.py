"""What every face classifier takes and gives, checked in one place, and flip TTA around any of them.

A predictor maps uint8 grey faces `[N, 48, 48]` (or `[N, 48, 48, 1]`) to float32 probabilities
`[N, 7]` in `EMOTIONS` order. The in-process network (`fer_async.model`) and the remote executor
(`fer_async.remote`) are both built as a `Network` (a function on validated faces) wrapped in
`FlipTTA` when flip TTA is on, so the two executors validate and mirror the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from fer_async.labels import FACE_SIZE
from fer_async.schedule import View


class ExecutorUnavailable(RuntimeError):
    """The predictor cannot classify faces now (an inference server down, timed out, refusing).

    A passing state: the server answers such frames "try again later" (503), not "failed".
    """


class Predictor(Protocol):
    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities [N, 7] in EMOTIONS order for uint8 faces [N, 48, 48]."""
        ...


class ViewPredictor(Predictor, Protocol):
    def predict_views(self, faces: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """As `predict`, each face classified in its own view (`views`, one per face) where flip TTA is on."""
        ...


def validate_faces(faces: np.ndarray) -> np.ndarray:
    """`faces` as uint8 `[N > 0, 48, 48]`, or ValueError saying what is wrong with them."""
    if not isinstance(faces, np.ndarray):
        raise ValueError(f"faces must be a numpy array, got {type(faces).__name__}")
    if faces.dtype != np.uint8:
        raise ValueError(f"faces must be uint8 grey levels 0..255, got dtype {faces.dtype}")
    if faces.ndim == 4 and faces.shape[-1] == 1:
        faces = faces[..., 0]
    if faces.ndim != 3 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"faces must have shape [N, 48, 48] or [N, 48, 48, 1], got {list(faces.shape)}")
    if faces.shape[0] == 0:
        raise ValueError("faces is an empty batch")
    return faces


class Network:
    """A predictor made of `classify`, a function on validated faces [N, 48, 48] (no TTA)."""

    def __init__(self, classify: Callable[[np.ndarray], np.ndarray]) -> None:
        self._classify = classify

    def predict(self, faces: np.ndarray) -> np.ndarray:
        return self._classify(validate_faces(faces))

    def predict_views(self, faces: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """Without flip TTA every face is classified as seen, whatever its view."""
        return self.predict(faces)


class FlipTTA:
    """`predictor` with each face also classified mirrored, in the same call, and the two averaged.

    One call for faces and mirrors keeps the batch whole: the in-process network runs it as one
    batch, the remote executor sends both halves in the same requests.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def predict(self, faces: np.ndarray) -> np.ndarray:
        faces = validate_faces(faces)
        return self.predict_views(faces, [View.BOTH] * len(faces))

    def predict_views(self, faces: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """Each face in its view (View.BOTH: as seen and mirrored, averaged), all in one call of the predictor."""
        faces = validate_faces(faces)
        if len(views) != len(faces):
            raise ValueError(f"{len(views)} views for {len(faces)} faces")
        n = len(faces)
        mirrors = faces[:, :, ::-1]
        mirrored = np.array([view is View.MIRRORED for view in views])
        both = np.flatnonzero([view is View.BOTH for view in views])
        seen = np.where(mirrored[:, None, None], mirrors, faces)
        probs = self.predictor.predict(np.concatenate([seen, mirrors[both]]))
        result = probs[:n].copy()
        result[both] = (result[both] + probs[n:]) / 2.0
        return result


def served(classify: Callable[[np.ndarray], np.ndarray], *, flip_tta: bool) -> ViewPredictor:
    """The predictor an executor serves: `classify` as a `Network`, in `FlipTTA` when it is on."""
    network = Network(classify)
    return FlipTTA(network) if flip_tta else network
