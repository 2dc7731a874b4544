"""What a distillation step trains on: shuffled batches of faces or their fixed views, with
labels or teacher-mixed targets, and per-face class weights."""

from __future__ import annotations

import keras
import numpy as np

from fer_async.labels import EMOTIONS
from training.data import class_weights


class FaceBatches(keras.utils.PyDataset):
    """Shuffled batches of (face, target, sample weight). With views, each face is shown as one of
    its K views per epoch, with its label, or with `teacher`, a target mixing that view's teacher
    probabilities and the label; without, the face itself and its label (the model augments it)."""

    def __init__(
        self,
        faces: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray,
        batch_size: int,
        seed: int,
        views: np.ndarray | None = None,
        teacher: np.ndarray | None = None,
        alpha: float = 0.0,
    ) -> None:
        super().__init__()
        self.faces, self.labels, self.weights = faces, labels, weights
        self.views, self.teacher, self.alpha = views, teacher, alpha
        self.batch_size = batch_size
        self.onehot = np.eye(len(EMOTIONS), dtype=np.float32)[labels]
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.labels))
        count = 1 if self.views is None else len(self.views)
        self.view_of = self.rng.integers(0, count, len(self.labels))

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        if self.views is None:
            return self.faces[ids][..., None], self.onehot[ids], self.weights[ids]
        views = self.view_of[ids]
        faces = self.views[views, ids][..., None]
        if self.teacher is None:
            return faces, self.onehot[ids], self.weights[ids]
        soft = self.teacher[views, ids].astype(np.float32)
        soft /= soft.sum(axis=1, keepdims=True)
        target = self.alpha * soft + (1.0 - self.alpha) * self.onehot[ids]
        return faces, target, self.weights[ids]


def sample_weights(labels: np.ndarray, power: float) -> np.ndarray:
    if power <= 0:
        return np.ones(len(labels), np.float32)
    weights = class_weights(labels, power)
    return np.array([weights[int(label)] for label in labels], np.float32)
