"""How a file's frames reach the Analyzer: its two stages, and the batches of frames on their way.

A file analysis (`core.RawStage`) prepares its frames one after the other, as each frame's
face search starts from the boxes of the frame before it (fer_async.schedule), and classifies
them in batches: one model call for the faces of many frames. `Stages` are the two calls;
`analyzer_stages` makes them for an Analyzer in this process, the server's jobs make them for
its pipeline and batcher (fer_async.server.jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fer_async.imaging import ImageError
from fer_async.labels import FrameResult
from fer_async.schedule import FramePlan

if TYPE_CHECKING:
    from fer_async.recognition import Analyzer, Prepared


@dataclass(frozen=True)
class Stages:
    """The Analyzer's two stages, blocking; a file analysis calls each from one thread of its own.

    `prepare` searches one decoded BGR frame for faces (the whole frame, or around the plan's
    hints) and crops them, for classification in the plan's view; `classify` classifies the faces
    of prepared frames, one FrameResult each, in order.
    """

    prepare: Callable[[np.ndarray, FramePlan], Prepared]
    classify: Callable[[list[Prepared]], Sequence[FrameResult]]


def analyzer_stages(analyzer: Analyzer) -> Stages:
    """`Stages` that call an Analyzer in this process (the CLI, the API)."""

    def prepare(frame: np.ndarray, plan: FramePlan) -> Prepared:
        prepared = analyzer.prepare(frame, plan)
        if isinstance(prepared, ImageError):  # decoded frames cannot fail to decode
            raise RuntimeError(f"analysis failed on a decoded frame: {prepared}")
        return prepared

    def classify(prepared: list[Prepared]) -> list[FrameResult]:
        return [result for result in analyzer.classify(prepared) if isinstance(result, FrameResult)]

    return Stages(prepare, classify)


@dataclass
class Batch:
    """Frames of a file on their way: (index, kept image, its preparation when analysed), then their results."""

    frames: list[tuple[int, np.ndarray | None, Future[Prepared] | None]] = field(default_factory=list)
    widths: dict[int, int] = field(default_factory=dict)  # each frame's own width (boxes are scaled back to it)
    times: dict[int, float] = field(default_factory=dict)  # each frame's timestamp in ms (RawFrame.ms)
    classified: Future[Sequence[FrameResult]] | None = None

    def classify_on(self, executor: Executor, classify: Callable[[list[Prepared]], Sequence[FrameResult]]) -> Batch:
        """Start classifying the batch's frames on `executor` (once they are prepared)."""
        preparations = [prepared for _, _, prepared in self.frames if prepared is not None]
        if preparations:
            self.classified = executor.submit(lambda: classify([p.result() for p in preparations]))
        return self

    def results(self) -> dict[int, FrameResult]:
        """Each analysed frame's result, by index (waits for the classification)."""
        indices = [index for index, _, prepared in self.frames if prepared is not None]
        results = list(self.classified.result()) if self.classified is not None else []
        if len(results) != len(indices):
            raise RuntimeError(f"classify returned {len(results)} results for {len(indices)} frames")
        return dict(zip(indices, results, strict=True))
