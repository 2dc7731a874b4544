"""Accuracy, macro-F1, per-class recall and the confusion matrix, computed with numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_async.labels import EMOTIONS


@dataclass(frozen=True)
class Report:
    n: int
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    precision: dict[str, float]
    confusion: np.ndarray  # [true, predicted] counts

    @property
    def support(self) -> dict[str, int]:
        """Faces per true class."""
        return dict(zip(EMOTIONS, self.confusion.sum(axis=1).tolist(), strict=True))

    def as_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "recall": {k: round(v, 4) for k, v in self.recall.items()},
            "precision": {k: round(v, 4) for k, v in self.precision.items()},
            "support": self.support,
        }

    def text(self) -> str:
        lines = [
            f"n={self.n}  accuracy={self.accuracy:.4f}  macro-F1={self.macro_f1:.4f}",
            "class      recall  precision  support",
        ]
        for name, support in self.support.items():
            lines.append(f"{name:9s}  {self.recall[name]:6.3f}  {self.precision[name]:9.3f}  {support:7d}")
        return "\n".join(lines)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = len(EMOTIONS)) -> np.ndarray:
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def report(y_true: np.ndarray, probs: np.ndarray) -> Report:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return Report(
        n=len(y_true),
        accuracy=float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        macro_f1=float(f1.mean()),
        recall=dict(zip(EMOTIONS, recall.tolist(), strict=True)),
        precision=dict(zip(EMOTIONS, precision.tolist(), strict=True)),
        confusion=cm,
    )
